package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/migshm/migshm/api"
	"github.com/urfave/cli/v2"
)

// What the commands share: the node they talk to, the bounds of an API call, their
// arguments, and how they print.

// socketFlag picks the node the CLI talks to. Flags are built afresh for every app:
// urfave/cli stores parsed values in them.
func socketFlag() cli.Flag {
	return &cli.StringFlag{Name: "socket", Usage: "local API socket of the node to talk to",
		EnvVars: []string{"MIGSHM_SOCKET"}, Value: api.DefaultSocket}
}

func client(c *cli.Context) *api.Client { return api.NewClient(c.String("socket")) }

// apiContext bounds one API call; long operations pass their own.
func apiContext(c *cli.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context, 30*time.Second)
}

// interspersedArgs returns the positional arguments of c after applying the flags that
// follow them: urfave/cli v2 stops parsing flags at the first argument, and `migshm tls
// node n1 --ip 10.0.0.11` should mean what it says. A nil slice (and nil error) means
// help was shown and the command has nothing more to do.
func interspersedArgs(c *cli.Context) ([]string, error) {
	rest := c.Args().Slice()
	args := []string{}
	for len(rest) > 0 {
		a := rest[0]
		rest = rest[1:]
		if a == "--" {
			args = append(args, rest...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			args = append(args, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if slices.Contains(cli.HelpFlag.Names(), name) {
			cli.HelpPrinter(c.App.Writer, cli.CommandHelpTemplate, c.Command)
			return nil, nil
		}
		i := slices.IndexFunc(c.Command.Flags, func(f cli.Flag) bool { return slices.Contains(f.Names(), name) })
		if i < 0 {
			return nil, fmt.Errorf("flag provided but not defined: %s", a)
		}
		if _, isBool := c.Command.Flags[i].(*cli.BoolFlag); isBool && !hasValue {
			value = "true"
		} else if !hasValue {
			if len(rest) == 0 {
				return nil, fmt.Errorf("flag needs an argument: %s", a)
			}
			value, rest = rest[0], rest[1:]
		}
		if err := c.Set(name, value); err != nil {
			return nil, fmt.Errorf("invalid value %q for flag %s: %v", value, a, err)
		}
	}
	return args, nil
}

// withArgs makes a command's action of one that takes its positional arguments, with the
// flags among them applied (interspersedArgs); it does not run it when they asked for
// help, which is then shown.
func withArgs(action func(c *cli.Context, args []string) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		args, err := interspersedArgs(c)
		if err != nil || args == nil {
			return err
		}
		return action(c, args)
	}
}

func jsonFlag() cli.Flag { return &cli.BoolFlag{Name: "json", Usage: "print the result as JSON"} }

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

// show prints v, what a command found or did: as JSON with --json, else with text.
func show[T any](c *cli.Context, v T, text func(w io.Writer, v T) error) error {
	if c.Bool("json") {
		return printJSON(c.App.Writer, v)
	}
	return text(c.App.Writer, v)
}

// callAndShow is the whole of a command that asks the daemon one thing once its
// arguments are checked: call runs under apiContext, and show prints its answer.
func callAndShow[T any](c *cli.Context, call func(ctx context.Context, cl *api.Client) (T, error), text func(w io.Writer, v T) error) error {
	ctx, cancel := apiContext(c)
	defer cancel()
	v, err := call(ctx, client(c))
	if err != nil {
		return err
	}
	return show(c, v, text)
}
