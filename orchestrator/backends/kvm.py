"""The kvm backend: a virtual server per tenant through libvirt, provisioned over SSH.

Each tenant's disk is a qcow2 overlay over the cached VM image, both volumes of one libvirt
storage pool; a small read-only seed volume carries the SSH host key, the key orch logs in
with and the hostname, which a unit in the image installs at every boot. The domain is
persistent and autostarted, boots the image's kernel directly, and on user-mode
networking is reached only through port forwards on the tenant's own loopback address:
the backend port for the front proxy, and SSH for Ansible and orch.
"""

import contextlib
import functools
import logging
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2

from .. import accel, hostcmd, vmimage
from ..errors import PreflightError, StepFailed
from .base import Backend

log = logging.getLogger(__name__)
# paramiko logs every refused attempt while a guest boots with a traceback; orch reports
# the last one itself when the wait ends.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

NAMESPACE = "https://orch.invalid/xmlns/tenant/1"
RESOURCE_KINDS = ("kvm_keys", "kvm_volume", "kvm_domain")
SERVICE = "orch-httpd.service"
SEED_LABEL = "orchseed"
#: The emulator's translation cache per guest, when there is no KVM.
TB_CACHE_MIB = 128
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@functools.cache
def _libvirt():
    import libvirt

    # libvirt prints every error on stderr as well as raising it; orch says it once.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


class KvmBackend(Backend):
    kind = "kvm"
    can_execute = True
    #: The memory is changed live through the balloon up to the boot-time maximum; a
    #: larger maximum takes effect at the next boot.
    can_resize_live = True
    #: A guest's files are reached only over SSH: the fragment checks need the host's view.
    can_check_fragments = False

    def __init__(self, config, store):
        super().__init__(config, store)
        self._conn = None
        self._ssh = {}

    # Connection and pool ----------------------------------------------------------------

    def conn(self):
        libvirt = _libvirt()
        if self._conn is None or not self._conn.isAlive():
            try:
                self._conn = libvirt.open(self.config.kvm_uri)
            except libvirt.libvirtError as exc:
                raise PreflightError(
                    f"cannot reach libvirt at {self.config.kvm_uri}: "
                    f"{exc.get_error_message()}", step="preflight",
                    fix="start it (`virtlogd -d; libvirtd -d`, which scripts/setup-host "
                        "does), or set [kvm] uri",
                ) from None
        return self._conn

    @property
    def pool_path(self):
        return self.config.kvm_pool_path or self.config.kvm_dir / "pool"

    def pool(self):
        """orch's storage pool, defined and started when missing; refused when it is
        someone else's (the same name on another folder)."""
        libvirt = _libvirt()
        conn = self.conn()
        name = self.config.kvm_pool
        local = self.config.kvm_uri.startswith("qemu:///")
        if local:
            # The hypervisor runs as its own user: every folder above the volumes must let
            # it through. Checked before a pool is defined, so a refusal makes nothing.
            self.pool_path.mkdir(parents=True, exist_ok=True)
            _check_traversable(self.pool_path)
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            if local:
                self.pool_path.chmod(0o711)
            xml = (f"<pool type='dir'><name>{name}</name><target><path>{self.pool_path}"
                   "</path></target></pool>")
            pool = conn.storagePoolDefineXML(xml, 0)
            pool.setAutostart(1)
        path = _xml_text(pool.XMLDesc(0), "./target/path")
        if path != str(self.pool_path):
            raise PreflightError(
                f"libvirt storage pool {name} is on {path}, not on this state directory's "
                f"{self.pool_path}", step="preflight",
                fix="give this state directory its own [kvm] pool name")
        if not pool.isActive():
            try:
                pool.create(0)
            except libvirt.libvirtError as exc:
                raise PreflightError(f"libvirt cannot start storage pool {name}: "
                                     f"{exc.get_error_message()}", step="preflight",
                                     fix=f"check {path} exists and is a folder") from None
        return pool

    def preflight(self):
        for tool in ("qemu-img", "mkfs.ext4", "ssh", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise PreflightError(f"{tool} is not installed", step="preflight",
                                     fix="run scripts/setup-host")
        self.conn()
        self.pool()

    def reachable(self):
        self.conn()

    # Names -------------------------------------------------------------------------------

    def domain_name(self, tenant):
        return f"{self.config.kvm_domain_prefix}{tenant.name}"

    def volume_names(self, tenant):
        base = self.domain_name(tenant)
        return {"disk": f"{base}.qcow2", "seed": f"{base}-seed.img"}

    def key_dir(self, tenant):
        return self.config.kvm_dir / "keys" / tenant.name

    def console_log(self, tenant):
        return self.config.kvm_dir / "console" / f"{tenant.name}.log"

    def address_pool(self):
        if self.config.kvm_network == "user":
            return self.config.kvm_loopback_pool
        return self.config.address_pool

    def domain(self, tenant):
        """The tenant's libvirt domain, or None."""
        libvirt = _libvirt()
        try:
            return self.conn().lookupByName(self.domain_name(tenant))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    # Image -------------------------------------------------------------------------------

    def ensure_image(self, progress=None):
        image = vmimage.ensure(self.config, progress=progress)
        self._base_volumes(image, progress)
        return image

    def _base_volumes(self, image, progress=None):
        """The image's disk, kernel and initrd as volumes of the pool (uploaded once, kept
        when tenants go), so a remote libvirt host has them too."""
        pool = self.pool()
        names = {}
        for part, path, suffix in (("disk", image.disk, "qcow2"),
                                   ("kernel", image.kernel, "vmlinuz"),
                                   ("initrd", image.initrd, "initrd")):
            name = f"{image.key}.{suffix}"
            names[part] = name
            if name not in pool.listVolumes():
                if progress:
                    progress(f"copying {path.name} of image {image.key} into pool "
                             f"{self.config.kvm_pool}")
                self._upload(pool, name, path)
        return names

    def _upload(self, pool, name, path):
        """A new volume with the bytes of `path`; libvirt finds its format on refresh."""
        libvirt = _libvirt()
        size = path.stat().st_size
        volume = pool.createXML(
            f"<volume><name>{name}</name><capacity unit='b'>{size}</capacity>"
            "<allocation>0</allocation><target><format type='raw'/><permissions>"
            "<mode>0644</mode></permissions></target></volume>", 0)
        try:
            stream = self.conn().newStream(0)
            volume.upload(stream, 0, size, 0)
            with open(path, "rb") as handle:
                stream.sendAll(lambda _s, nbytes, f: f.read(nbytes), handle)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                volume.delete(0)
            raise
        pool.refresh(0)

    # Lifecycle ---------------------------------------------------------------------------

    def create(self, tenant, record):
        step = {"tenant": tenant.name, "step": "create"}
        self._check_ports_free(tenant)
        image = vmimage.current(self.config)
        base = self._base_volumes(image)
        pool = self.pool()
        pool.refresh(0)
        volumes = self.volume_names(tenant)

        taken = [name for name in volumes.values() if name in pool.listVolumes()]
        if taken:
            raise StepFailed(
                f"pool {self.config.kvm_pool} already holds volume {taken[0]}, which orch did "
                "not make for this tenant", tenant=tenant.name, step="create",
                fix=f"remove or rename it (`virsh vol-delete {taken[0]} --pool "
                    f"{self.config.kvm_pool}`) if it is not needed, or set another "
                    "[kvm] domain_prefix")
        keys = self.key_dir(tenant)
        record("kvm_keys", path=str(keys))
        self._make_keys(tenant, keys)

        record("kvm_volume", pool=self.config.kvm_pool, name=volumes["seed"])
        self._make_seed(tenant, pool, volumes["seed"], keys)

        record("kvm_volume", pool=self.config.kvm_pool, name=volumes["disk"])
        base_path = pool.storageVolLookupByName(base["disk"]).path()
        capacity = pool.storageVolLookupByName(base["disk"]).info()[1]
        pool.createXML(
            f"<volume><name>{volumes['disk']}</name><capacity unit='b'>{capacity}</capacity>"
            "<target><format type='qcow2'/></target><backingStore><path>"
            f"{base_path}</path><format type='qcow2'/></backingStore></volume>", 0)

        existing = self.domain(tenant)
        if existing is not None:
            self._check_takeover(tenant, existing)
        # A domain left under this name keeps its UUID: libvirt refuses to redefine a name
        # with a new one.
        domain_uuid = existing.UUIDString() if existing else str(uuid.uuid4())
        record("kvm_domain", name=self.domain_name(tenant), uuid=domain_uuid)
        xml = self.domain_xml(tenant, domain_uuid, image.key,
                              {part: pool.storageVolLookupByName(name).path()
                               for part, name in base.items()})
        self.console_log(tenant).parent.mkdir(parents=True, exist_ok=True)
        libvirt = _libvirt()
        try:
            domain = self.conn().defineXML(xml)
            domain.setAutostart(1)
            domain.create()
        except libvirt.libvirtError as exc:
            raise StepFailed(f"libvirt refused the domain: {exc.get_error_message()}",
                             **step) from None
        self._wait_for_ssh(tenant)

    def _check_takeover(self, tenant, domain):
        """A stopped domain of the tenant's name, not another state directory's, may be
        redefined; anything else is refused."""
        libvirt = _libvirt()
        name = domain.name()
        fix = (f"remove it (`virsh undefine {name}`) if it is not needed, or set another "
               "[kvm] domain_prefix")
        if domain.isActive():
            raise StepFailed(f"a running domain {name} already exists", tenant=tenant.name,
                             step="create", fix=fix)
        try:
            facts = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)
        except libvirt.libvirtError:
            return  # no orch facts: a bare definition under orch's name
        home = _xml_text(facts, f"{{{NAMESPACE}}}home")
        if home and home != str(self.config.home):
            raise StepFailed(f"domain {name} belongs to the orch state directory {home}",
                             tenant=tenant.name, step="create", fix=fix)

    def domain_xml(self, tenant, domain_uuid, image_key, boot_paths):
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                                 autoescape=True, undefined=jinja2.StrictUndefined)
        return env.get_template("domain.xml.j2").render(
            tenant=tenant, name=self.domain_name(tenant), uuid=domain_uuid,
            domain_type=self.domain_type(), namespace=NAMESPACE, image_key=image_key,
            home=self.config.home, vcpus=self.config.kvm_vcpus,
            kernel=boot_paths["kernel"], initrd=boot_paths["initrd"],
            pool=self.config.kvm_pool, disk_volume=self.volume_names(tenant)["disk"],
            seed_volume=self.volume_names(tenant)["seed"], network=self.config.kvm_network,
            bridge=self.config.kvm_bridge, console_log=self.console_log(tenant),
            ssh_port=self.config.kvm_ssh_port, outbound=self.config.kvm_outbound,
            tb_cache_mib=TB_CACHE_MIB,
        )

    def domain_type(self):
        """`kvm` where a probe showed a guest kernel runs under it here, else `qemu`."""
        if self.config.kvm_accel != "auto":
            return self.config.kvm_accel
        if not self.config.kvm_uri.startswith("qemu:///"):
            return "qemu"  # the probe runs here, not on the remote host
        return accel.choose(self.config, vmimage.current(self.config))

    def _check_ports_free(self, tenant):
        if self.config.kvm_network != "user":
            return
        for port in (tenant.port, self.config.kvm_ssh_port):
            with socket.socket() as sock:
                try:
                    sock.bind((tenant.address, port))
                except OSError as exc:
                    raise StepFailed(
                        f"{tenant.address}:{port} is taken on this host ({exc.strerror})",
                        tenant=tenant.name, step="create",
                        fix="stop what listens there, or move [kvm] loopback_pool") from None

    def _make_keys(self, tenant, keys):
        shutil.rmtree(keys, ignore_errors=True)
        keys.mkdir(parents=True, mode=0o700)
        for name, comment in (("id_ed25519", f"orch@{tenant.name}"),
                              ("ssh_host_ed25519_key", f"root@{tenant.name}")):
            hostcmd.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                         "-f", str(keys / name)], tenant=tenant.name, step="create")
        host_key = (keys / "ssh_host_ed25519_key.pub").read_text().split()
        (keys / "known_hosts").write_text(
            f"{self._known_host(tenant)} {host_key[0]} {host_key[1]}\n")

    def _known_host(self, tenant):
        return f"[{tenant.address}]:{self.config.kvm_ssh_port}"

    def _make_seed(self, tenant, pool, name, keys):
        with tempfile.TemporaryDirectory(prefix="orch-seed-") as scratch:
            tree = Path(scratch) / "tree"
            tree.mkdir()
            shutil.copyfile(keys / "id_ed25519.pub", tree / "authorized_keys")
            shutil.copyfile(keys / "ssh_host_ed25519_key", tree / "ssh_host_ed25519_key")
            shutil.copyfile(keys / "ssh_host_ed25519_key.pub",
                            tree / "ssh_host_ed25519_key.pub")
            (tree / "hostname").write_text(tenant.name + "\n")
            if self.config.kvm_network == "bridge":
                prefix = self.config.address_pool.prefixlen
                (tree / "network").write_text(
                    f"[Match]\nName=en*\n\n[Network]\nAddress={tenant.address}/{prefix}\n")
            image = Path(scratch) / "seed.img"
            hostcmd.run(["mkfs.ext4", "-q", "-F", "-L", SEED_LABEL, "-d", str(tree),
                         str(image), "4M"], tenant=tenant.name, step="create")
            self._upload(pool, name, image)

    def start(self, tenant):
        domain = self.domain(tenant)
        if domain is None:
            raise StepFailed(f"domain {self.domain_name(tenant)} is not defined",
                             tenant=tenant.name, step="start",
                             fix=f"run `orch delete-tenant {tenant.name}` and create it again")
        if not domain.isActive():
            self._boot(tenant, domain, "start")
        self._wait_for_ssh(tenant)
        done = self.execute(tenant, ["systemctl", "start", SERVICE], as_root=True,
                            timeout=120)
        if done.returncode != 0:
            raise StepFailed(f"{SERVICE} did not start in the guest: "
                             f"{(done.stderr or done.stdout).strip()}", tenant=tenant.name,
                             step="start", fix="see Apache's error log below and in the guest")

    def restore(self, tenant, check=False):
        """A guest that should run but whose domain is down (libvirtd did not autostart
        it) is booted, so Ansible can reach it; Apache is left to `start`."""
        domain = self.domain(tenant)
        if domain is None or domain.isActive():
            return []
        if tenant.state != "running":
            raise StepFailed("the tenant is stopped and its VM is off, so Ansible cannot reach "
                             "it", tenant=tenant.name, step="restore",
                             fix=f"`orch start {tenant.name}`, then reprovision it")
        if not check:
            self._boot(tenant, domain, "restore")
            self._wait_for_ssh(tenant)
        return [f"domain {self.domain_name(tenant)} was not running"]

    def _boot(self, tenant, domain, step):
        """Start the defined domain, with a fresh console log."""
        libvirt = _libvirt()
        with contextlib.suppress(FileNotFoundError):
            self.console_log(tenant).unlink()
        try:
            domain.create()
        except libvirt.libvirtError as exc:
            raise StepFailed(f"libvirt could not start the domain: {exc.get_error_message()}",
                             tenant=tenant.name, step=step) from None

    def graceful(self, tenant):
        done = self.execute(tenant, ["systemctl", "reload-or-restart", SERVICE], as_root=True)
        if done.returncode != 0:
            raise StepFailed(f"{SERVICE} did not reload: {(done.stderr or done.stdout).strip()}",
                             tenant=tenant.name, step="reload",
                             fix="see Apache's error log in the guest")

    def stop(self, tenant):
        """Shut the guest down cleanly, and pull the plug when it does not go in time."""
        libvirt = _libvirt()
        domain = self.domain(tenant)
        if domain is None or not domain.isActive():
            return
        # The guest's own init powers it off; ACPI is the fallback for a guest orch cannot
        # log in to (it needs a power-button handler in the guest).
        done = self.execute(tenant, ["systemctl", "--no-block", "poweroff"], as_root=True,
                            check_reach=False, timeout=20)
        self._forget_ssh(tenant)
        if done.returncode != 0:
            with contextlib.suppress(libvirt.libvirtError):
                domain.shutdown()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(libvirt.libvirtError):
                if not domain.isActive():
                    return
            time.sleep(0.5)
        log.warning("tenant %s: the guest did not shut down in 60 s; powering it off",
                    tenant.name)
        with contextlib.suppress(libvirt.libvirtError):
            domain.destroy()

    def destroy(self, tenant):
        self._forget_ssh(tenant)
        for resource in reversed(self.store.resources(tenant.name)):
            if resource.kind in RESOURCE_KINDS:
                self.release(tenant, resource)
                self.store.drop_resource(resource.id)
        with contextlib.suppress(FileNotFoundError):
            self.console_log(tenant).unlink()

    def release(self, tenant, resource):
        """Undo one recorded object; a missing one is already undone."""
        libvirt = _libvirt()
        data = resource.data
        if resource.kind == "kvm_domain":
            domain = self.domain(tenant)
            if domain is None:
                return
            if domain.UUIDString() != data["uuid"]:
                raise StepFailed(
                    f"domain {data['name']} has UUID {domain.UUIDString()}, not the "
                    f"{data['uuid']} orch made", tenant=tenant.name, step="destroy",
                    fix="it is not orch's: rename or remove it by hand")
            if domain.isActive():
                domain.destroy()
            flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                     | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                     | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                     | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            domain.undefineFlags(flags)
        elif resource.kind == "kvm_volume":
            try:
                pool = self.conn().storagePoolLookupByName(data["pool"])
                pool.refresh(0)
                volume = pool.storageVolLookupByName(data["name"])
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_VOL,
                                            libvirt.VIR_ERR_NO_STORAGE_POOL):
                    return
                raise
            volume.delete(0)
        elif resource.kind == "kvm_keys":
            path = Path(data["path"])
            if path.parent != self.config.kvm_dir / "keys":
                raise StepFailed(f"refusing to remove {path}: not a tenant's key folder",
                                 tenant=tenant.name, step="destroy")
            shutil.rmtree(path, ignore_errors=True)

    def resize(self, tenant, memory_bytes, max_clients):
        """The domain's memory: in its definition, and live through the balloon driver
        when the guest runs and the new size is within the maximum it booted with."""
        libvirt = _libvirt()
        domain = self.domain(tenant)
        if domain is None:
            raise StepFailed(f"domain {self.domain_name(tenant)} is not defined",
                             tenant=tenant.name, step="resize")
        config, live = libvirt.VIR_DOMAIN_AFFECT_CONFIG, libvirt.VIR_DOMAIN_AFFECT_LIVE
        maximum = libvirt.VIR_DOMAIN_MEM_MAXIMUM
        kib = memory_bytes >> 10
        try:
            if domain.isActive():
                booted_max = domain.maxMemory()
                if kib <= booted_max:
                    domain.setMemoryFlags(kib, live)
                else:
                    log.warning("tenant %s: %d MiB is above the %d MiB the guest booted with; "
                                "it takes effect at the next `orch stop` and `orch start`",
                                tenant.name, memory_bytes >> 20, booted_max >> 10)
            persistent = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            defined_max = int(ET.fromstring(persistent).findtext("memory")) or kib
            if kib > defined_max:
                domain.setMemoryFlags(kib, config | maximum)
                domain.setMemoryFlags(kib, config)
            else:
                domain.setMemoryFlags(kib, config)
                domain.setMemoryFlags(kib, config | maximum)
        except libvirt.libvirtError as exc:
            raise StepFailed(f"libvirt refused the new memory size: {exc.get_error_message()}",
                             tenant=tenant.name, step="resize") from None

    def status(self, tenant):
        domain = self.domain(tenant)
        return "running" if domain is not None and domain.isActive() else "stopped"

    def inspect(self, tenant):
        domain = self.domain(tenant)
        if domain is None:
            return [f"domain {self.domain_name(tenant)} is not defined"]
        if not domain.isActive():
            return [f"domain {self.domain_name(tenant)} is not running"]
        found = []
        done = self.execute(tenant, ["systemctl", "is-active", "--quiet", SERVICE],
                            as_root=True, check_reach=False)
        if done.returncode != 0:
            found.append("Apache is not running")
        return found

    def ansible_host(self, tenant):
        keys = self.key_dir(tenant)
        return {
            "ansible_connection": "ssh",
            "ansible_host": tenant.address,
            "ansible_port": self.config.kvm_ssh_port,
            "ansible_user": "root",
            # Ansible must check the host key against the one orch pinned, never skip it.
            "ansible_host_key_checking": True,
            "ansible_ssh_private_key_file": str(keys / "id_ed25519"),
            "ansible_ssh_common_args": (
                f"-o UserKnownHostsFile={keys / 'known_hosts'} -o StrictHostKeyChecking=yes "
                "-o IdentitiesOnly=yes -o BatchMode=yes"),
            # Inside the VM nothing but the forwards reaches Apache; there is one address.
            "apache_modperl_listen_address": "0.0.0.0",
            "apache_modperl_service_manager": "systemd",
            "apache_modperl_open_files": self.config.open_files,
        }

    def usage(self, tenant):
        """From the domain's memory statistics (the balloon driver's) and its CPU time."""
        libvirt = _libvirt()
        domain = self.domain(tenant)
        empty = {"memory_current": 0, "memory_peak": 0, "memory_cache": 0,
                 "cpu_seconds": 0.0, "processes": 0}
        if domain is None or not domain.isActive():
            return empty
        try:
            stats = domain.memoryStats()
            cpu_ns = domain.info()[4]
        except libvirt.libvirtError:
            return empty
        # What the guest uses of the memory it was given, and its page cache within that;
        # rss (the hypervisor process on the host) when the balloon gives no figures.
        if "available" in stats and "unused" in stats:
            current = (stats["available"] - stats["unused"]) * 1024
        else:
            current = stats.get("rss", 0) * 1024
        cache = min(stats.get("disk_caches", 0) * 1024, current)
        processes = 0
        done = self.execute(tenant, ["sh", "-c", "ls -d /proc/[0-9]* | wc -l"], as_root=True,
                            check_reach=False)
        if done.returncode == 0 and done.stdout.strip().isdigit():
            processes = int(done.stdout.strip())
        # The guest keeps no peak of its own; the report's peak is the highest sample.
        return {"memory_current": current, "memory_peak": current,
                "memory_cache": cache, "cpu_seconds": round(cpu_ns / 1e9, 3),
                "processes": processes}

    def console_tail(self, tenant, lines=10):
        try:
            text = self.console_log(tenant).read_text(errors="replace")
        except OSError:
            return "(no console log)"
        shown = [line for line in text.splitlines() if line.strip()][-lines:]
        return " / ".join(shown) or "(the guest printed nothing)"

    def log_tail(self, tenant, lines=5):
        done = self.execute(tenant, ["tail", "-n", str(lines), "/var/log/apache2/error.log"],
                            as_root=True, check_reach=False)
        if done.returncode != 0:
            return "(unreadable)"
        return " / ".join(done.stdout.strip().splitlines()) or "(empty)"

    # Reaching the guest -----------------------------------------------------------------

    def _client(self, tenant, timeout=10.0):
        import paramiko

        client = self._ssh.get(tenant.name)
        if client is not None and client.get_transport() and client.get_transport().is_active():
            return client
        keys = self.key_dir(tenant)
        client = paramiko.SSHClient()
        client.load_host_keys(str(keys / "known_hosts"))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(tenant.address, port=self.config.kvm_ssh_port, username="root",
                       key_filename=str(keys / "id_ed25519"), timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, allow_agent=False,
                       look_for_keys=False)
        self._ssh[tenant.name] = client
        return client

    def _forget_ssh(self, tenant):
        client = self._ssh.pop(tenant.name, None)
        if client is not None:
            client.close()

    def _wait_for_ssh(self, tenant):
        """Wait until orch can log in to the guest, or say what it waited for and show the
        end of the guest's console."""
        import paramiko

        timeout = self.config.kvm_boot_timeout
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            domain = self.domain(tenant)
            if domain is None or not domain.isActive():
                last = "the domain stopped"
                break
            try:
                self._client(tenant, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
                return
            except (OSError, EOFError, paramiko.SSHException) as exc:
                last = str(exc) or type(exc).__name__
                self._forget_ssh(tenant)
            time.sleep(1)
        raise StepFailed(
            f"waited {timeout:.0f} s for SSH on {tenant.address}:{self.config.kvm_ssh_port} "
            f"(last: {last}); the guest's console ends: {self.console_tail(tenant)}",
            tenant=tenant.name, step="boot",
            fix="see the console log for where the boot stopped; raise [kvm] boot_timeout "
                "on a slow host")

    def execute(self, tenant, argv, as_root=False, input=None, timeout=60, check_reach=True):
        """Run argv in the guest over SSH; as the tenant unless `as_root`.

        `check_reach=False` turns an unreachable guest into a failed command instead of an
        error, for the callers that only look.
        """
        import paramiko

        if not as_root:
            argv = ["setpriv", f"--reuid={tenant.uid}", f"--regid={tenant.gid}",
                    "--clear-groups", "--no-new-privs", "--bounding-set=-all", "--", *argv]
        command = shlex.join(str(arg) for arg in argv)
        try:
            client = self._client(tenant)
            stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
            if input is not None:
                stdin.write(input)
            stdin.channel.shutdown_write()
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            code = stdout.channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._forget_ssh(tenant)
            if not check_reach:
                return subprocess.CompletedProcess(argv, 255, "", str(exc))
            raise StepFailed(f"cannot reach the guest over SSH: {exc}", tenant=tenant.name,
                             step="execute", fix=f"run `orch start {tenant.name}`") from None
        return subprocess.CompletedProcess(argv, code, out, err)


def _xml_text(xml, path):
    node = ET.fromstring(xml).find(path)
    return node.text if node is not None else None


def _check_traversable(path):
    for folder in [path, *path.parents]:
        if not folder.stat().st_mode & 0o001:
            raise PreflightError(
                f"{folder} does not let other users through (mode "
                f"{folder.stat().st_mode & 0o777:o}), so the hypervisor cannot open the "
                f"volumes under {path}", step="preflight",
                fix=f"chmod o+x {folder}, or set [kvm] pool_path elsewhere")
