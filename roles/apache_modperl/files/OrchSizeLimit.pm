package OrchSizeLimit;

# Apache2::SizeLimit as orch's guests need it: a child whose private memory passes its
# share of the tenant's memory cap finishes the request it serves and then exits, and the
# master starts a fresh one, before the cgroup has to kill anything.
#
# Two of Apache2::SizeLimit's platform hooks are replaced:
#
# - The size. Without Linux::Smaps (which Debian 12 does not package) Apache2::SizeLimit
#   reads /proc/self/statm, whose "size" is the virtual size and whose "shared" leaves out
#   the copy-on-write pages a child still shares with the master, so a fresh child looks
#   nearly as large as the master. /proc/self/smaps_rollup counts a page as private only
#   when no other process maps it: Private_Clean + Private_Dirty is what this child alone
#   costs, and the limit is set on that (set_max_unshared_size).
# - Which process is the master. Apache2::SizeLimit ends only processes whose parent pid is
#   above 1, taking a parent of 1 to mean "the master". In a guest the master is pid 1 of
#   the tenant's PID namespace, so every child's parent is 1. The master is the process that
#   loaded this module while it read its configuration.
#
# A tenant's own Perl code runs in the same interpreter and could change these settings;
# the cgroup's memory cap is what holds in the end. This recycles a growing child before.

use strict;
use warnings;

use Apache2::SizeLimit ();
use Apache2::Const -compile => qw(DECLINED);

our @ISA = ('Apache2::SizeLimit');

my $master_pid = $$;

# (size, shared, private) in KiB, as Apache::SizeLimit::Core expects them.
sub _platform_check_size {
    my $class = shift;
    my %kib;
    if (open my $rollup, '<', '/proc/self/smaps_rollup') {
        while (my $line = <$rollup>) {
            $kib{$1} = $2 if $line =~ /^(\w+):\s+(\d+) kB/;
        }
        close $rollup;
    }
    unless (defined $kib{Rss}) {
        $class->_error_log("cannot read /proc/self/smaps_rollup; no size limit applied");
        return (0, 0, 0);
    }
    my $shared = ($kib{Shared_Clean} // 0) + ($kib{Shared_Dirty} // 0);
    my $private = ($kib{Private_Clean} // 0) + ($kib{Private_Dirty} // 0);
    return ($kib{Rss}, $shared, $private);
}

# Apache2::SizeLimit only compares this with 1.
sub _platform_getppid {
    return $$ == $master_pid ? 1 : 2;
}

# PerlPostReadRequestHandler: a server-wide phase, so no <Location> of the tenant's can
# replace it the way a per-directory PerlCleanupHandler could be replaced.
sub register {
    my $r = shift;
    __PACKAGE__->add_cleanup_handler($r);
    return Apache2::Const::DECLINED;
}

1;
