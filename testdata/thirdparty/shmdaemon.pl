#!/usr/bin/perl
# shmdaemon.pl PIDFILE [WORKERS]: a classic forking SysV server, written the way Unix
# daemons are (fork, setsid, fork again, pidfile), on Perl's own SysV IPC: a private
# segment holding a total and one slot per worker, and a semaphore used as a mutex with
# SEM_UNDO. Each worker, under the mutex, adds one to the total and to its own slot. The
# master checks total == sum(slots) every 100 ms (under the mutex); on a difference it
# prints "BAD total=T sum=S" and exits 3. It prints "ok total=T" once a second. SIGTERM to
# the master stops the workers, removes the IPC objects and the pidfile, prints
# "shmdaemon stopped" and exits 0.
use strict;
use warnings;
use IPC::SysV qw(IPC_PRIVATE IPC_CREAT IPC_RMID SEM_UNDO);
use POSIX qw(setsid);

my ($pidfile, $workers) = @ARGV;
die "usage: shmdaemon.pl PIDFILE [WORKERS]\n" unless defined $pidfile;
$workers ||= 2;
my $size = 8 * ($workers + 1);

defined(my $pid = fork()) or die "fork: $!";
exit 0 if $pid;    # the first process returns at once, as `daemon --start` does
setsid() or die "setsid: $!";
defined($pid = fork()) or die "fork: $!";
exit 0 if $pid;    # not a session leader: can never take a terminal

$| = 1;
my $shm = shmget(IPC_PRIVATE, $size, IPC_CREAT | 0600) // die "shmget: $!";
my $sem = semget(IPC_PRIVATE, 1, IPC_CREAT | 0600) // die "semget: $!";
semop($sem, pack("s!s!s!", 0, 1, 0)) or die "semop: $!";    # 1: the mutex is free
shmwrite($shm, pack("Q<*", (0) x ($workers + 1)), 0, $size) or die "shmwrite: $!";

# semop is never restarted after a signal handler ran (signal(7)): SIGTERM while the
# master waits for the mutex fails it with EINTR, so retry as careful daemons do.
sub semop_retry {
	my ($what, $op) = @_;
	until (semop($sem, $op)) { die "$what: $!" unless $!{EINTR} }
}
sub lock   { semop_retry("lock",   pack("s!s!s!", 0, -1, SEM_UNDO)) }
sub unlock { semop_retry("unlock", pack("s!s!s!", 0, 1,  SEM_UNDO)) }

my @kids;
for my $i (1 .. $workers) {
	defined(my $k = fork()) or die "fork: $!";
	if (!$k) {
		$SIG{TERM} = 'DEFAULT';
		while (1) {
			lock();
			shmread($shm, my $buf, 0, $size) or die "shmread: $!";
			my @v = unpack("Q<*", $buf);
			$v[0]++;
			$v[$i]++;
			shmwrite($shm, pack("Q<*", @v), 0, $size) or die "shmwrite: $!";
			unlock();
			select(undef, undef, undef, 0.002);
		}
	}
	push @kids, $k;
}

open(my $fh, ">", "$pidfile.tmp") or die "pidfile: $!";
print $fh "$$\n";
close $fh;
rename("$pidfile.tmp", $pidfile) or die "pidfile: $!";

my $stop = 0;
$SIG{TERM} = sub { $stop = 1 };
print "shmdaemon ready pid=$$ shmid=$shm semid=$sem workers=$workers\n";
my $ticks = 0;
while (!$stop) {
	lock();
	shmread($shm, my $buf, 0, $size) or die "shmread: $!";
	unlock();
	my @v   = unpack("Q<*", $buf);
	my $sum = 0;
	$sum += $_ for @v[1 .. $#v];
	if ($v[0] != $sum) {
		print "BAD total=$v[0] sum=$sum\n";
		kill 'KILL', @kids;
		exit 3;
	}
	print "ok total=$v[0]\n" if $ticks++ % 10 == 0;
	select(undef, undef, undef, 0.1);
}
kill 'TERM', @kids;
waitpid($_, 0) for @kids;
shmctl($shm, IPC_RMID, 0);
semctl($sem, 0, IPC_RMID, 0);
unlink $pidfile;
print "shmdaemon stopped\n";
exit 0;
