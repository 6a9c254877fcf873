"""Fingerprints: code versions that ignore comments and docstrings but follow a method's helpers, raw-data
manifests that see edited, added and removed files."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from benchmark.fingerprint import code_version, digest, method_sources, raw_manifest

METHOD = textwrap.dedent('''
    """A method."""
    from methods._shared_blocks import Block  # a helper of another name, shared with other methods
    from ._mine_net import Net


    class Method:
        """Its docstring."""

        def build(self):
            return Net(Block())
''')


def test_a_method_s_code_is_its_file_its_helpers_and_what_they_import(tmp_path: Path):
    (tmp_path / "mine.py").write_text(METHOD)
    (tmp_path / "_mine_net.py").write_text("from methods import _deep\nclass Net: pass\n")
    (tmp_path / "_mine_extra.py").write_text("X = 1\n")  # _<name>_*: the method's even if not imported
    (tmp_path / "_shared_blocks.py").write_text("class Block: pass\n")
    (tmp_path / "_deep.py").write_text("Y = 2\n")
    (tmp_path / "_other_net.py").write_text("Z = 3\n")  # another method's helper
    assert [p.name for p in method_sources(tmp_path / "mine.py")] == [
        "_deep.py", "_mine_extra.py", "_mine_net.py", "_shared_blocks.py", "mine.py"]


def test_code_version_ignores_comments_docstrings_and_layout_but_not_code(tmp_path: Path):
    method = tmp_path / "mine.py"
    (tmp_path / "_mine_net.py").write_text("class Net:\n    pass\n")
    (tmp_path / "_shared_blocks.py").write_text("class Block: pass\n")
    method.write_text(METHOD)
    first = code_version(method)
    assert code_version(None) != first  # the follower's code: the framework alone
    method.write_text(METHOD.replace('"""Its docstring."""', '"""Another docstring."""') + "\n# a comment\n")
    os.utime(method, ns=(1, 1))  # a new version of the file, whatever the clock's resolution
    assert code_version(method) == first
    (tmp_path / "_mine_net.py").write_text("class Net:\n    scale = 2\n")
    assert code_version(method) != first  # a helper's code


def test_raw_manifest_sees_edited_added_and_removed_files_but_not_hidden_ones(tmp_path: Path):
    (tmp_path / "case" / "a.nii.gz").parent.mkdir()
    (tmp_path / "case" / "a.nii.gz").write_bytes(b"volume")
    before = digest(raw_manifest(tmp_path))
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x").write_bytes(b"x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    assert digest(raw_manifest(tmp_path)) == before
    (tmp_path / "case" / "a.nii.gz").write_bytes(b"VOLUME")
    os.utime(tmp_path / "case" / "a.nii.gz", ns=(10**18, 10**18))
    edited = digest(raw_manifest(tmp_path))
    assert edited != before
    (tmp_path / "case" / "b.nii.gz").write_bytes(b"new")
    assert digest(raw_manifest(tmp_path)) != edited
    (tmp_path / "case" / "b.nii.gz").unlink()
    assert digest(raw_manifest(tmp_path)) == edited
    assert [name for name, _, _ in raw_manifest(tmp_path)] == [os.path.join("case", "a.nii.gz")]
