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
# Each child reads its limit when it starts (PerlChildInitHandler) from the root-owned file
# that PerlSetVar OrchSizeLimitFile names, so a graceful restart after a resize gives the
# new children the new limit, and no Perl runs while Apache only reads its configuration.
#
# A tenant's own Perl code runs in the same interpreter and could change these settings;
# the cgroup's memory cap is what holds in the end. This recycles a growing child before.

use strict;
use warnings;

use Apache2::SizeLimit ();
use Apache2::ServerRec ();
use Apache2::ServerUtil ();
use Apache2::Const -compile => qw(OK DECLINED);

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

# PerlChildInitHandler: read `unshared_kib N` and `check_interval N` lines.
sub child_init {
    my ($pool, $server) = @_;
    my $file = $server->dir_config('OrchSizeLimitFile');
    my %setting = (unshared_kib => 0, check_interval => 1);
    if ($file && open my $settings, '<', $file) {
        while (my $line = <$settings>) {
            $setting{$1} = $2 if $line =~ /^(unshared_kib|check_interval)\s+(\d+)\s*$/;
        }
        close $settings;
    }
    else {
        __PACKAGE__->_error_log("cannot read the size limit file; no size limit applied");
    }
    __PACKAGE__->set_max_process_size(0);
    __PACKAGE__->set_min_shared_size(0);
    __PACKAGE__->set_max_unshared_size($setting{unshared_kib});
    __PACKAGE__->set_check_interval($setting{check_interval} || 1);
    return Apache2::Const::OK;
}

# PerlPostReadRequestHandler: a server-wide phase, so no <Location> of the tenant's can
# replace it the way a per-directory PerlCleanupHandler could be replaced.
sub register {
    my $r = shift;
    __PACKAGE__->add_cleanup_handler($r);
    return Apache2::Const::DECLINED;
}

1;
