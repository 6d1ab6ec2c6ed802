"""What the tests see of libvirt directly, without orch: domains, volumes, pools."""

import contextlib
import shutil


def _conn():
    try:
        import libvirt
    except ImportError:
        return None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        return libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        return None


def domains(prefix):
    """Names of every domain, defined or running, whose name starts with `prefix`."""
    conn = _conn()
    if conn is None:
        return []
    with contextlib.closing(conn):
        return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix))


def domain(name):
    """(persistent, autostart, active, XML) of domain `name`, or None."""
    import libvirt

    conn = _conn()
    with contextlib.closing(conn):
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            return None
        return (bool(dom.isPersistent()), bool(dom.autostart()), bool(dom.isActive()),
                dom.XMLDesc(0))


def define(xml):
    conn = _conn()
    with contextlib.closing(conn):
        conn.defineXML(xml)


def volumes(pool_name):
    import libvirt

    conn = _conn()
    if conn is None:
        return []
    with contextlib.closing(conn):
        try:
            pool = conn.storagePoolLookupByName(pool_name)
            pool.refresh(0)
            return sorted(pool.listVolumes())
        except libvirt.libvirtError:
            return []


def remove_pool(pool_name, path):
    """Delete a test's own pool with its volumes (the uploaded base image among them)."""
    import libvirt

    conn = _conn()
    if conn is not None:
        with contextlib.closing(conn):
            try:
                pool = conn.storagePoolLookupByName(pool_name)
            except libvirt.libvirtError:
                pool = None
            if pool is not None:
                if pool.isActive():
                    pool.refresh(0)
                    for name in pool.listVolumes():
                        pool.storageVolLookupByName(name).delete(0)
                    pool.destroy()
                pool.undefine()
    shutil.rmtree(path, ignore_errors=True)
