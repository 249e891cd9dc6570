package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// Shell completion: the shell asks `migshm ... --generate-bash-completion` (urfave/cli's
// protocol) for the words that may come next; commands that take workloads or nodes
// answer with the names the cluster has now (from this node's daemon, within a second;
// nothing if it does not answer).

// argKinds says what each positional argument of a command is, for completion.
var argKinds = map[string][]string{
	"move": {"workload", "node"}, "check": {"workload", "node"},
	"stop": {"workload"}, "logs": {"workload"}, "rm": {"workload"}, "pin": {"workload"}, "unpin": {"workload"},
	"drain": {"node"}, "undrain": {"node"},
}

// withCompletion turns completion on for app and gives the commands of argKinds their
// argument completers.
// urfave/cli's own completers read os.Args, not the arguments the app runs with.
func withCompletion(app *cli.App) *cli.App {
	app.EnableBashCompletion = true
	app.BashComplete = func(c *cli.Context) {
		if typingFlag(c) {
			printFlags(c.App.Writer, c.App.Flags)
			return
		}
		for _, cmd := range c.App.Commands {
			if !cmd.Hidden {
				fmt.Fprintln(c.App.Writer, cmd.Name)
			}
		}
	}
	for _, cmd := range app.Commands {
		cmd.BashComplete = completeArgs(cmd, argKinds[cmd.Name])
	}
	return app
}

// typingFlag reports whether the word being completed is a flag.
func typingFlag(c *cli.Context) bool {
	args := c.Args().Slice()
	return len(args) > 0 && strings.HasPrefix(args[len(args)-1], "-")
}

func printFlags(w io.Writer, flags []cli.Flag) {
	for _, f := range flags {
		for _, name := range f.Names() {
			if len(name) == 1 {
				fmt.Fprintln(w, "-"+name)
			} else {
				fmt.Fprintln(w, "--"+name)
			}
		}
	}
}

// completeArgs completes the next argument of cmd from the cluster, or its flags when
// the word being completed starts with "-".
func completeArgs(cmd *cli.Command, kinds []string) cli.BashCompleteFunc {
	return func(c *cli.Context) {
		if typingFlag(c) {
			printFlags(c.App.Writer, cmd.Flags)
			return
		}
		args := c.Args().Slice()
		if len(args) >= len(kinds) {
			return
		}
		ctx, cancel := context.WithTimeout(c.Context, time.Second)
		defer cancel()
		for _, name := range clusterNames(ctx, c, kinds[len(args)]) {
			fmt.Fprintln(c.App.Writer, name)
		}
	}
}

// clusterNames lists the workload names or node ids the local daemon knows; nil if it
// does not answer.
func clusterNames(ctx context.Context, c *cli.Context, kind string) []string {
	cl := client(c)
	var out []string
	switch kind {
	case "workload":
		ws, err := cl.Workloads(ctx)
		if err != nil {
			return nil
		}
		for _, w := range ws {
			out = append(out, w.Name)
		}
	case "node":
		ns, err := cl.Nodes(ctx)
		if err != nil {
			return nil
		}
		for _, n := range ns {
			out = append(out, n.ID)
		}
	}
	return out
}

const bashCompletion = `# bash completion for migshm; load it with
#   source <(migshm completion bash)
# or install it as /usr/share/bash-completion/completions/migshm
_migshm() {
	local cur words
	cur="${COMP_WORDS[COMP_CWORD]}"
	words=("${COMP_WORDS[@]:0:COMP_CWORD}")
	if [[ "$cur" == -* ]]; then
		words+=("$cur")
	fi
	COMPREPLY=($(compgen -W "$("${words[0]}" "${words[@]:1}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o default -F _migshm migshm
`

const zshCompletion = `#compdef migshm
# zsh completion for migshm; load it with
#   source <(migshm completion zsh)
# or install it as _migshm in a directory of $fpath
_migshm() {
	local -a opts
	local cur=${words[CURRENT]}
	local -a args=("${(@)words[2,CURRENT-1]}")
	if [[ "$cur" == -* ]]; then
		args+=("$cur")
	fi
	opts=("${(@f)$(${words[1]} "${(@)args}" --generate-bash-completion 2>/dev/null)}")
	_describe 'values' opts
}
if [[ "$funcstack[1]" = "_migshm" ]]; then
	_migshm "$@"
else
	compdef _migshm migshm
fi
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print the shell completion script for bash or zsh",
		ArgsUsage: "bash | zsh",
		Description: "Completes commands, flags, and the workload names and node ids of the cluster\n" +
			"(asked of this node's daemon as you type).\n\n" +
			"Examples:\n  migshm completion bash > /usr/share/bash-completion/completions/migshm\n" +
			"  source <(migshm completion bash)\n" +
			"  migshm completion zsh > \"${fpath[1]}/_migshm\"",
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("completion takes one shell, bash or zsh (got %d arguments)", len(args))
			}
			switch args[0] {
			case "bash":
				_, err := fmt.Fprint(c.App.Writer, bashCompletion)
				return err
			case "zsh":
				_, err := fmt.Fprint(c.App.Writer, zshCompletion)
				return err
			}
			return fmt.Errorf("completion: no script for shell %q; migshm has bash and zsh", args[0])
		}),
	}
}

func manCommand() *cli.Command {
	return &cli.Command{
		Name:  "man",
		Usage: "print the migshm(8) manual page, made from the commands' own help",
		Description: "Examples:\n  migshm man | man -l -\n" +
			"  migshm man > /usr/local/share/man/man8/migshm.8",
		Action: withArgs(func(c *cli.Context, args []string) error {
			if len(args) != 0 {
				return fmt.Errorf("man takes no arguments (got %q)", args)
			}
			page, err := c.App.ToMan()
			if err != nil {
				return fmt.Errorf("man: %w", err)
			}
			_, err = fmt.Fprint(c.App.Writer, page)
			return err
		}),
	}
}
