"""Plugin sync and push: S3 (or local folders) <-> a plugin folder; needs obstore and boto3.

Commands: `dioptra plugins sync --dest DIR SOURCE...` (the Job's init container) and
`dioptra plugins push [--bundle] LOCAL_DIR s3://bucket/prefix` (also `python -m dioptra_sync`).

Python API (what the runner calls)::

    from dioptra_sync import SyncError, sync_sources

    report = sync_sources(["s3://bucket/plugins", "./more-plugins"], Path(plugin_dir),
                          endpoint_url=None, allow_empty=False, base=experiment_folder)
    report.manifest   # the JSON document also written to DIR/.dioptra-plugins.json
    report.summary()  # one line for humans

- `sync_sources(sources, dest, *, endpoint_url=None, allow_empty=False, workers=16,
  base=None, progress_stream=None) -> SyncReport`. A source is `s3://bucket/prefix`,
  `file:///abs/path` or a folder path (relative paths resolve against `base`, default the
  current directory). Where files land follows rsync's trailing-slash rule: with a slash,
  the *contents* land at DEST's top (`s3://b/plugins/acme/ops.py` synced from
  `s3://b/plugins/` becomes `DEST/acme/ops.py`); without one, the prefix's last folder is kept
  (`s3://b/dioptra_builtins` becomes `DEST/dioptra_builtins/...`, Dioptra's layout, where a
  prefix holds one plugin package). Local folders follow the same rule. The prefix is a
  folder: `s3://b/custom` never picks up `custom2/`.
  Sources merge in order; a later one wins on the same path (`report.overrides` lists those
  paths). Re-syncs download only objects whose size or ETag changed (a no-op re-sync is one
  LIST per source and no GET) and delete the files the previous sync wrote whose object is
  gone; files the sync never wrote are left alone. Dotfiles, `__pycache__` and `.pyc` are
  never synced. Each file is written to a temp dotfile and renamed when complete. Keys that
  could land outside DEST (`..`, absolute, backslashes, empty segments) and symlinked folders
  inside DEST stop the sync before anything is written through them.
  `progress_stream` (default stderr) gets a live line when it is a terminal.
  A source may also be a bundle (`bundle.py`): `s3://b/prefix/bundle.json` (the pointer to
  the latest `push --bundle`), `s3://b/prefix/bundles/sha256-<64 hex>.tar.gz` (one bundle,
  pinned by its digest) or, locally, a path to a `.tar.gz`. A bundle is one GET (plus one
  for the pointer), checked against its digest, unpacked safely (regular files and folders
  only, names checked, size and count capped) into `DEST/.dioptra-bundles/sha256-<hex>/`
  and then merged like a local folder; that cache makes a no-op re-sync one small GET (the
  pointer) or none (a digest-named source). Its files land where the bundle holds them.
- `push_folder(folder, "s3://bucket/prefix", *, endpoint_url=None, delete=False, workers=16,
  progress_stream=None) -> PushReport`: upload changed files (size or MD5 differs from the
  object's ETag); `delete=True` also removes objects under the prefix that the folder lacks.
- `push_bundle(folder, "s3://bucket/prefix", *, endpoint_url=None) -> BundlePushReport`:
  pack the folder deterministically (same tree, same digest; `"./acme"` packs `acme/...`,
  `"./plugins/"` the contents), upload `<prefix>/bundles/sha256-<hex>.tar.gz` unless there,
  and point `<prefix>/bundle.json` at it (`report.pointer_uri`, `report.bundle_uri`).
- `SyncError`: every failure the user can fix; `str(error)` is one line naming the source
  and the cause, never a credential and never a traceback.
- `load_manifest(dest) -> dict | None`: the manifest for the Experiment's status:
  `{"version": 1, "syncedAt", "sources": [...], "files": [{"path", "source", "key", "size",
  "sha256", "etag" (S3 only), "versionId" (versioned buckets only)}], "bundles": [{"source",
  "digest", "key", "size", "files", "pointer" (when found through one)}] (bundles only)}`.
- `status_entries(document) -> list`: what goes into the Experiment's `status.plugins`: one
  `{"source", "bundle": "sha256:<hex>", "key", "size", "files"}` per bundle instead of its
  files, plus the per-file entries of the other sources.

S3 access goes through obstore (`s3_obstore.py`), set up as the AWS CLI would be: the
endpoint from `endpoint_url`, `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (an explicit
endpoint means path-style requests: MinIO, Ceph); keys from the environment, else boto3's
resolver (profiles, `~/.aws` files, IRSA web identity, SSO, instance metadata); the region
from `AWS_REGION` / `AWS_DEFAULT_REGION` or the profile; `AWS_CA_BUNDLE`; `HTTP(S)_PROXY` and
`NO_PROXY`. Transient errors are retried with backoff (`AWS_MAX_ATTEMPTS`, default 5).
Nothing here imports Prefect, the Kubernetes client or rich, and a local-folder sync imports
no S3 client at all.
"""

from dioptra_sync.engine import SyncReport, sync_sources
from dioptra_sync.errors import SyncError
from dioptra_sync.manifest import load_manifest, status_entries
from dioptra_sync.push import BundlePushReport, PushReport, push_bundle, push_folder
from dioptra_sync.uri import MANIFEST_NAME

__all__ = [
    "MANIFEST_NAME",
    "BundlePushReport",
    "PushReport",
    "SyncError",
    "SyncReport",
    "load_manifest",
    "push_bundle",
    "push_folder",
    "status_entries",
    "sync_sources",
]
