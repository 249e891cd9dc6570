module github.com/migshm/migshm

go 1.26.8

require (
	github.com/checkpoint-restore/go-criu/v7 v7.2.0
	golang.org/x/sys v0.49.0
	google.golang.org/protobuf v1.34.2
)
