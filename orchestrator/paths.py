"""Where orch's own files live: playbooks, roles, inventory and image lists beside the package."""

from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PLAYBOOKS = PROJECT / "playbooks"
ROLES = PROJECT / "roles"
INVENTORY = PROJECT / "inventory"
IMAGES = PROJECT / "images"
ANSIBLE_CFG = PROJECT / "ansible.cfg"
