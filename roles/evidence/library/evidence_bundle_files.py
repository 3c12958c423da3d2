#!/usr/bin/python
"""Writes the evidence bundle's files on the controller in one module run and returns the
SHA-256 of each file as read back from disk.

One run instead of a copy and a stat per file: on the 2-core build machine each module run
costs about half a second, most of it Python compiling Ansible's module utilities afresh,
so the eleven files took 16 s as copy and stat loops (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: evidence_bundle_files
short_description: Write the evidence bundle's files and hash them as written
description:
  - Creates O(path) (mode O(dir_mode)) and writes each of O(files) into it atomically with
    mode O(mode); returns the SHA-256 of every file read back from disk.
  - Always reports a change; the bundle directory is new on every run. No check mode (the
    evidence playbook refuses --check).
options:
  path:
    description: The bundle directory.
    type: path
    required: true
  files:
    description: File name (no directory part) to its text content, written as UTF-8.
    type: dict
    required: true
  mode:
    description: Mode of every file.
    type: str
    default: "0640"
  dir_mode:
    description: Mode of the bundle directory.
    type: str
    default: "0750"
"""

RETURN = r"""
sha256:
  description: File name to the SHA-256 (hex) of the file as it is on disk.
  type: dict
  returned: success
"""


def write(directory: str, name: str, content: str, mode: int) -> str:
    data = content.encode("utf-8")
    handle, staged = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(handle, "wb") as staged_file:
            staged_file.write(data)
        os.chmod(staged, mode)
        os.replace(staged, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(staged):
            os.unlink(staged)
        raise
    with open(os.path.join(directory, name), "rb") as written:
        return hashlib.sha256(written.read()).hexdigest()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "files": {"type": "dict", "required": True},
            "mode": {"type": "str", "default": "0640"},
            "dir_mode": {"type": "str", "default": "0750"},
        },
        supports_check_mode=False,
    )
    directory = module.params["path"]
    files = module.params["files"]
    bad = [name for name in files if not name or os.sep in name or name in (".", "..")]
    if bad:
        module.fail_json(msg=f"file names must not name a directory: {bad}")
    try:
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, int(module.params["dir_mode"], 8))
        mode = int(module.params["mode"], 8)
        digests = {name: write(directory, name, str(text), mode) for name, text in files.items()}
    except OSError as error:
        module.fail_json(msg=f"{directory}: {error}")
    module.exit_json(changed=True, path=directory, sha256=digests)


if __name__ == "__main__":
    main()
