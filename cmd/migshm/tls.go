package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/migshm/migshm/api"
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
			{
				Name:      "revoke",
				Usage:     "put a node certificate on the cluster's denylist",
				ArgsUsage: "[CERT-FILE]",
				Description: "Tells the cluster (through the local daemon) never to accept CERT-FILE again: every\n" +
					"daemon refuses TLS handshakes with it, as client and as server, and the requests of\n" +
					"connections opened before. Use it for a node certificate that leaked, or the old one\n" +
					"after a renewal. The denylist is in the replicated table: it holds for nodes that\n" +
					"join later too. Revoke by file, or by --serial and --node when the file is gone.\n" +
					"To rotate a node's certificate: `migshm tls node NAME`, copy the files, `systemctl\n" +
					"reload migshmd` on that node (SIGHUP: no restart), then revoke the old one.\n" +
					"A node that is gone for good also needs `migshm leave NAME --force`.\n\n" +
					"Examples:\n  migshm tls revoke /etc/migshm/tls/n3.old/node.crt --reason \"renewed\"\n" +
					"  migshm tls revoke --serial 5f2a9c... --node n3 --reason \"laptop stolen\"",
				Flags: []cli.Flag{
					jsonFlag(),
					&cli.StringFlag{Name: "serial", Usage: "serial number of the certificate, in hex (instead of CERT-FILE)"},
					&cli.StringFlag{Name: "node", Usage: "the node name the certificate was issued for (with --serial)"},
					&cli.StringFlag{Name: "reason", Usage: "why, recorded with the revocation"},
				},
				Action: withArgs(tlsRevoke),
			},
			{
				Name:  "revoked",
				Usage: "list the cluster's revoked certificates",
				Description: "Lists the denylist kept in the replicated table.\n\n" +
					"Examples:\n  migshm tls revoked\n  migshm tls revoked --json",
				Flags: []cli.Flag{jsonFlag()},
				Action: withArgs(func(c *cli.Context, args []string) error {
					if len(args) != 0 {
						return fmt.Errorf("migshm tls revoked takes no arguments (got %q)", args)
					}
					return callAndShow(c, func(ctx context.Context, cl *api.Client) ([]api.Revocation, error) {
						return cl.Revocations(ctx)
					}, func(w io.Writer, revs []api.Revocation) error {
						if len(revs) == 0 {
							fmt.Fprintln(w, "no revoked certificates")
							return nil
						}
						tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
						fmt.Fprintln(tw, "SERIAL\tNODE\tREVOKED\tREASON")
						for _, r := range revs {
							fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Serial, r.Node, time.Unix(0, r.At).UTC().Format(time.RFC3339), r.Reason)
						}
						return tw.Flush()
					})
				}),
			},
		},
	}
}

// tlsRevoke revokes the certificate in the file named by args[0], or the one --serial
// and --node name.
func tlsRevoke(c *cli.Context, args []string) error {
	req := api.RevokeRequest{Serial: c.String("serial"), Node: c.String("node"), Reason: c.String("reason")}
	switch {
	case len(args) == 1 && req.Serial == "" && req.Node == "":
		cert, err := pki.ReadCertificate(args[0])
		if err != nil {
			return err
		}
		req.Serial, req.Node = cert.SerialNumber.Text(16), cert.Subject.CommonName
	case len(args) == 0 && req.Serial != "" && req.Node != "":
	default:
		return errors.New("give the certificate file (`migshm tls revoke CERT-FILE`) or both --serial and --node, not both ways")
	}
	return callAndShow(c, func(ctx context.Context, cl *api.Client) (api.Revocation, error) {
		return cl.Revoke(ctx, req)
	}, func(w io.Writer, r api.Revocation) error {
		_, err := fmt.Fprintf(w, "revoked certificate %s of %s: no node accepts it any more\n", r.Serial, r.Node)
		return err
	})
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
