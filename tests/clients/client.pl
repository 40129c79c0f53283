#!/usr/bin/perl
# Gearman::Client (libgearman-client-perl) as a user script.
# usage: client.pl HOST:PORT ACTION FUNCTION [PAYLOAD] [key=value ...]
# ACTION: do (print "complete:<result>" or "fail"), background (print the handle),
#         status (FUNCTION is a handle; print "known running num den")
# PAYLOAD "@PATH" reads the payload from PATH.
# options: uniq=U  priority=high|normal|low  exceptions=1  timeout=SECONDS
#          out=PATH (write the result there and print "complete:@PATH")
use strict;
use warnings;
use Gearman::Client;

$| = 1;
my ($server, $action, $func, $payload, @opts) = @ARGV;
die "usage: client.pl HOST:PORT ACTION FUNCTION [PAYLOAD] [k=v...]\n" unless defined $func;
my %opt = map { split /=/, $_, 2 } @opts;
if (defined $payload && $payload =~ /^@(.+)$/) {
    open(my $in, '<:raw', $1) or die "open $1: $!";
    local $/;
    $payload = <$in>;
    close $in;
}
my $client = Gearman::Client->new(job_servers => [$server],
                                  exceptions => $opt{exceptions} ? 1 : 0);
my %task_opts = (timeout => $opt{timeout} || 30);
$task_opts{uniq} = $opt{uniq} if defined $opt{uniq};
$task_opts{priority} = $opt{priority} if defined $opt{priority};

if ($action eq 'do') {
    my @events;
    my $failed = 0;
    my $result = $client->do_task($func, $payload, {
        %task_opts,
        on_data      => sub { push @events, "data:${$_[0]}" },
        on_exception => sub { push @events, "exception:$_[0]" },
        on_fail      => sub { $failed = 1 },
    });
    print "$_\n" for @events;
    if (!defined $result) {
        print "fail\n";
    } elsif (defined $opt{out}) {
        open(my $out, '>:raw', $opt{out}) or die "open $opt{out}: $!";
        print $out ${$result};
        close $out;
        print "complete:\@$opt{out}\n";
    } else {
        print "complete:${$result}\n";
    }
} elsif ($action eq 'background') {
    my $handle = $client->dispatch_background($func, $payload, \%task_opts);
    die "no handle\n" unless defined $handle;
    print "$handle\n";
} elsif ($action eq 'status') {
    my $st = $client->get_status($func);
    if (!$st) { print "unknown\n"; exit 0; }
    my $progress = $st->progress;
    printf "%d %d %s\n", $st->known ? 1 : 0, $st->running ? 1 : 0,
        $progress ? join('/', @$progress) : '-';
} else {
    die "unknown action $action\n";
}
