"""The one interface every isolation backend implements."""

import abc


class Backend(abc.ABC):
    """A kind of guest: how it is made, started, stopped, reached by Ansible and metered.

    Every host object `create` makes is recorded through `record(kind, **data)` before it is
    made, so `destroy` (and rollback after a failed create) undoes exactly those objects.
    """

    kind = ""
    #: The memory cap can be changed while the guest runs.
    can_resize_live = False
    #: Commands can be run inside the guest as the tenant (`execute`).
    can_execute = False
    #: A tenant's own httpd.conf fragment can be checked and switched (`tenant-config`);
    #: this needs the guest's files seen from the host (`guest_root`) and `spawn`.
    can_check_fragments = False
    #: A stopped guest can still be converged (its files are there without it running).
    can_converge_stopped = False
    #: The guest's root is layered over a base image that can be changed (`change_image`).
    can_change_image = False
    #: The host sees the guest's Apache children and can read their memory (`worker_pids`).
    can_measure_children = False

    def __init__(self, config, store):
        self.config = config
        self.store = store

    @abc.abstractmethod
    def preflight(self):
        """Check this host can run the kind; raise PreflightError saying what to fix."""

    def reachable(self):
        """Raise PreflightError when what the guests run on cannot be reached now (a
        daemon); checked before a delete changes anything."""
        return None

    def ensure_image(self, progress=None):
        """The base image guests of this kind are made from, built first when missing."""
        from .. import images

        return images.ensure(self.config, progress=progress)

    def address_pool(self):
        """The network tenants of this kind get their addresses from."""
        return self.config.address_pool

    @abc.abstractmethod
    def create(self, tenant, record):
        """Make the guest's root, network and limits, recording each object first."""

    @abc.abstractmethod
    def start(self, tenant):
        """Start the tenant's Apache inside the guest; return once it has been launched."""

    @abc.abstractmethod
    def stop(self, tenant):
        """Stop every process of the guest; harmless when it is already stopped."""

    @abc.abstractmethod
    def destroy(self, tenant):
        """Undo every recorded object of the tenant's guest, newest first; harmless twice."""

    @abc.abstractmethod
    def status(self, tenant):
        """`running` or `stopped`."""

    @abc.abstractmethod
    def ansible_host(self, tenant):
        """The inventory variables that let Ansible reach the guest."""

    @abc.abstractmethod
    def usage(self, tenant):
        """Memory (current and peak, bytes) and process count of the guest."""

    def resize(self, tenant, memory_bytes, max_clients):
        """Apply new caps: to a running guest when `can_resize_live`, else while stopped."""
        raise NotImplementedError(f"backend {self.kind} cannot resize a running guest")

    def restore(self, tenant, check=False):
        """Bring back what a host reboot takes away from a guest (its root, network and
        limits), short of starting it; return what was missing, in words. With `check`,
        only say what is missing."""
        return []

    def image_of(self, tenant):
        """The root of the base image the tenant's guest is layered over, or None."""
        return None

    def change_image(self, tenant, rootfs):
        """Layer the stopped guest's root over another base image; return notes, in words."""
        raise NotImplementedError(f"backend {self.kind} has no base image to change")

    def inspect(self, tenant):
        """What of a running guest is missing on the host, in words; empty when whole."""
        return [] if self.status(tenant) == "running" else ["Apache is not running"]

    def graceful(self, tenant):
        """Load a changed configuration without dropping requests (a graceful restart)."""
        raise NotImplementedError(f"backend {self.kind} cannot restart Apache gracefully")

    def master_pid(self, tenant):
        """The host pid of the guest's Apache master, or None when not known."""
        return None

    def worker_pids(self, tenant):
        """Host pids of the guest's Apache children (not the master)."""
        raise NotImplementedError(f"backend {self.kind} cannot see its guests' processes")

    def console_tail(self, tenant, lines=10):
        """The last lines the guest printed on its console, for error messages."""
        return "(not kept by this backend)"

    def log_tail(self, tenant, lines=5):
        """The last lines of the tenant's Apache error log, for error messages."""
        return "(not kept by this backend)"

    def execute(self, tenant, argv, as_root=False):
        """Run argv inside the guest, as the tenant unless `as_root`."""
        raise NotImplementedError(f"backend {self.kind} cannot run commands in its guests")

    def spawn(self, tenant, argv, log_path):
        """Start argv inside the guest as the tenant in the background; return a Popen."""
        raise NotImplementedError(f"backend {self.kind} cannot start programs in its guests")

    def guest_root(self, tenant):
        """Where the host sees the guest's root file system."""
        raise NotImplementedError(f"backend {self.kind} does not expose its guests' files")
