#!/usr/bin/perl
# Gearman::Worker (libgearman-client-perl) serving one function until killed.
# usage: worker.pl HOST:PORT FUNCTION MODE [ARG]
# MODE: reverse | log (append payload + "\n" to ARG, return "logged") |
#       stream (WORK_DATA for each comma-separated piece, return "done") |
#       status (WORK_STATUS 1/2, wait for file ARG, return "finished") |
#       fail (WORK_FAIL) | die (the handler dies: WORK_EXCEPTION then WORK_FAIL) |
#       hang (write own pid to ARG, then sleep: for kill tests)
use strict;
use warnings;
use Gearman::Worker;

$| = 1;
my ($server, $func, $mode, $arg) = @ARGV;
die "usage: worker.pl HOST:PORT FUNCTION MODE [ARG]\n" unless defined $mode;

my $worker = Gearman::Worker->new(job_servers => [$server]);

sub wait_file {
    my ($path) = @_;
    for (1 .. 3000) {    # 30 s at most
        return 1 if -e $path;
        select(undef, undef, undef, 0.01);
    }
    return 0;
}

my %modes = (
    reverse => sub { my $job = shift; return scalar reverse $job->arg; },
    log     => sub {
        my $job = shift;
        open(my $fh, '>>', $arg) or die "open $arg: $!";
        print $fh $job->arg, "\n";
        close $fh;
        return "logged";
    },
    stream => sub {
        my $job = shift;
        $worker->send_work_data($job, $_) for split /,/, $job->arg;
        return "done";
    },
    status => sub {
        my $job = shift;
        $job->set_status(1, 2);
        wait_file($arg);
        return "finished";
    },
    fail => sub { return undef; },
    die  => sub { die "perl worker died\n"; },
    hang => sub {
        open(my $fh, '>', "$arg.tmp") or die "open $arg: $!";
        print $fh "$$\n";
        close $fh;
        rename("$arg.tmp", $arg);
        sleep 60;
        return "woke up";
    },
);
die "unknown mode $mode\n" unless $modes{$mode};
$worker->register_function($func => $modes{$mode});
$worker->work while 1;
