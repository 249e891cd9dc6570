#!/usr/bin/perl
# shmserver.pl PORT: a TCP server on a SysV segment. It answers every line on every
# connection with a counter kept in the segment, one answer per line, many connections
# at once; it prints "listening" once it listens on 0.0.0.0:PORT.
use strict; use IO::Socket::INET; use IO::Select; use IPC::SysV qw(IPC_PRIVATE IPC_CREAT);
$| = 1;
my $port = shift;
my $id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600) // die "shmget: $!";
my $l = IO::Socket::INET->new(LocalPort => $port, Listen => 8, ReuseAddr => 1, Proto => "tcp") or die "listen: $@";
print "listening\n";
my $sel = IO::Select->new($l);
while (1) {
	for my $s ($sel->can_read) {
		if ($s == $l) { my $c = $l->accept; $sel->add($c) if $c; next }
		my $n = sysread($s, my $buf, 4096);
		if (!$n) { $sel->remove($s); close $s; next }
		for (1 .. ($buf =~ tr/\n//)) {
			my $v; shmread($id, $v, 0, 8) or die "shmread: $!";
			my $c = unpack("Q", $v) + 1;
			shmwrite($id, pack("Q", $c), 0, 8) or die "shmwrite: $!";
			syswrite($s, "$c\n") or die "write: $!";
		}
	}
}
