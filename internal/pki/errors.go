package pki

import "errors"

// Sentinels. Every error of this package that matches one wraps it with the file and a
// hint of what to do, so callers use errors.Is and print the error as it is.
var (
	// ErrCAExists: InitCA found a CA key and was not told to replace it.
	ErrCAExists = errors.New("CA key already exists")
	// ErrInvalidName: a node name that cannot be a certificate name or a directory name.
	ErrInvalidName = errors.New("invalid node name")
	// ErrKeyPermissions: a private key file that group or others can access.
	ErrKeyPermissions = errors.New("private key is accessible by group or others")
	// ErrUntrusted: a certificate that the cluster CA did not issue (or not for this use).
	ErrUntrusted = errors.New("certificate not issued by the cluster CA")
	// ErrExpired: a certificate outside its validity period.
	ErrExpired = errors.New("certificate expired or not yet valid")
)
