package main

import (
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/migshm/migshm/internal/pki"
	"github.com/urfave/cli/v2"
)

// defaultCADir is where the CA lives on the operator's admin machine.
const defaultCADir = "/etc/migshm/tls"

// nodeTLSDir is where migshmd looks for a node's ca.crt, node.crt and node.key.
const nodeTLSDir = "/var/lib/migshmd/tls/"

func tlsCommand() *cli.Command {
	dirFlag := &cli.StringFlag{Name: "dir", Value: defaultCADir, Usage: "CA directory (ca.crt, ca.key)"}
	return &cli.Command{
		Name:  "tls",
		Usage: "create the cluster CA and the node certificates daemons use to trust each other",
		Description: "Peer traffic between migshmd daemons (raft and the peer API) is mutual TLS: a daemon\n" +
			"talks only to daemons holding a certificate of the cluster's own CA. Create the CA\n" +
			"once, on an admin machine (the CA key never goes to the nodes), then one certificate\n" +
			"per node, and copy each node's three files to " + nodeTLSDir + " on that node.\n\n" +
			"Examples:\n" +
			"  migshm tls init\n" +
			"  migshm tls node n1 --ip 10.0.0.11\n" +
			"  migshm tls node n2 --ip 10.0.0.12 --dns n2.lab.example\n" +
			"  scp -p /etc/migshm/tls/n1/{ca.crt,node.crt,node.key} root@10.0.0.11:" + nodeTLSDir,
		HideHelpCommand: true,
		Subcommands: []*cli.Command{
			{
				Name:  "init",
				Usage: "create the cluster CA",
				Description: "Writes DIR/ca.crt (the CA certificate every node gets) and DIR/ca.key (its\n" +
					"private key, mode 0600: it stays on this machine); DIR is made mode 0700. The CA is\n" +
					"valid for 10 years. An existing CA is never replaced without --force: every node\n" +
					"certificate it issued would stop working.\n\n" +
					"Examples:\n  migshm tls init\n  migshm tls init --dir ./lab-ca",
				Flags: []cli.Flag{
					dirFlag,
					&cli.BoolFlag{Name: "force", Usage: "replace an existing CA (every node must then get a new certificate)"},
				},
				Action: withArgs(tlsInit),
			},
			{
				Name:      "node",
				Usage:     "issue the certificate of a node",
				ArgsUsage: "NAME",
				Description: "Signs a certificate for node NAME (use its migshmd node id) with the CA in DIR and\n" +
					"writes DIR/NAME/node.crt, DIR/NAME/node.key (mode 0600) and DIR/NAME/ca.crt, a copy\n" +
					"of the CA certificate: the three files the node needs. The certificate names NAME,\n" +
					"the --dns names and the --ip addresses; daemons do not check them (they trust the\n" +
					"CA, since raft addresses may be NATed), but other TLS clients may. Running it again\n" +
					"for a NAME renews the certificate, with a new key.\n\n" +
					"Examples:\n  migshm tls node n1 --ip 10.0.0.11\n" +
					"  migshm tls node n2 --ip 10.0.0.12 --ip fd00::12 --dns n2.lab.example --days 365\n" +
					"  migshm tls node n3 --dir ./lab-ca --out ./n3-tls",
				Flags: []cli.Flag{
					dirFlag,
					&cli.StringSliceFlag{Name: "ip", Usage: "IP address of the node (repeatable)"},
					&cli.StringSliceFlag{Name: "dns", Usage: "DNS name of the node besides NAME (repeatable)"},
					&cli.StringFlag{Name: "out", Usage: "directory to write the node's files to", DefaultText: "DIR/NAME"},
					&cli.IntFlag{Name: "days", Value: 730, Usage: "validity of the certificate in days (at most the CA's)"},
				},
				Action: withArgs(tlsNode),
			},
		},
	}
}

func tlsInit(c *cli.Context, args []string) error {
	if len(args) != 0 {
		return fmt.Errorf("tls init takes no arguments (got %q); see `migshm tls init --help`", args)
	}
	dir := c.String("dir")
	if err := pki.InitCA(dir, pki.CAOptions{Force: c.Bool("force")}); err != nil {
		return err
	}
	crt := filepath.Join(dir, pki.CACertFile)
	ca, err := pki.ReadCertificate(crt)
	if err != nil {
		return err
	}
	w := c.App.Writer
	fmt.Fprintf(w, "wrote %s (CA certificate %q, valid until %s)\n", crt, ca.Subject.CommonName, ca.NotAfter.Format(time.DateOnly))
	fmt.Fprintf(w, "wrote %s (CA key, mode 0600: keep it on this machine, never copy it to a node)\n", filepath.Join(dir, pki.CAKeyFile))
	if c.Bool("force") {
		fmt.Fprintln(w, "certificates of the previous CA are no longer trusted: issue every node a new one")
	}
	dirArg := ""
	if dir != defaultCADir {
		dirArg = " --dir " + dir
	}
	fmt.Fprintf(w, "next: for each node, `migshm tls node%s NAME --ip NODE_IP`\n", dirArg)
	return nil
}

func tlsNode(c *cli.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("tls node needs exactly one NAME (got %d arguments); see `migshm tls node --help`", len(args))
	}
	name := args[0]
	opts := pki.NodeOptions{DNS: c.StringSlice("dns"), OutDir: c.String("out")}
	for _, s := range c.StringSlice("ip") {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip %q is not an IP address", s)
		}
		opts.IPs = append(opts.IPs, ip)
	}
	days := c.Int("days")
	if days <= 0 {
		return fmt.Errorf("--days %d: the validity must be at least one day", days)
	}
	opts.Validity = time.Duration(days) * 24 * time.Hour
	out, err := pki.IssueNode(c.String("dir"), name, opts)
	if err != nil {
		return err
	}
	crt := filepath.Join(out, pki.NodeCertFile)
	cert, err := pki.ReadCertificate(crt)
	if err != nil {
		return err
	}
	names := slices.Clone(cert.DNSNames)
	for _, ip := range cert.IPAddresses {
		names = append(names, ip.String())
	}
	w := c.App.Writer
	fmt.Fprintf(w, "wrote %s (node %s: %s; valid until %s)\n", crt, name, strings.Join(names, ", "), cert.NotAfter.Format(time.DateOnly))
	fmt.Fprintf(w, "wrote %s (mode 0600)\n", filepath.Join(out, pki.NodeKeyFile))
	fmt.Fprintf(w, "wrote %s (copy of the CA certificate)\n", filepath.Join(out, pki.CACertFile))
	fmt.Fprintf(w, "next: copy %s/{%s,%s,%s} to %s on node %s (keep %s mode 0600)\n",
		out, pki.CACertFile, pki.NodeCertFile, pki.NodeKeyFile, nodeTLSDir, name, pki.NodeKeyFile)
	return nil
}
