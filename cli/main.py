"""The ``cowfs`` command line. Every command is a client: of a daemon (through its control
socket) or of a store (read directly; LMDB lets many processes read while daemons write)."""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cowfs.cli import idle_cpus, launcher
from cowfs.cli.client import DaemonError, mount_for, open_store, request, resolve_store_path
from cowfs.cli.client import snapshot as take_snapshot
from cowfs.cli.output import emit_json, human_size, human_time, progress_on_terminal, table
from cowfs.daemon.addresses import cowfs_mounts
from cowfs.fs.errors import StoreError
from cowfs.fs.records import SnapshotRecord, format_snapshot_id
from cowfs.fs.store import MAIN_BRANCH, NEEDS_FSCK, Store, check_branch_name, describe

# Each command imports the engine modules only it needs: every `cowfs` call (and `cowfs mount`
# most of all) pays for what is imported here before it does anything.
if TYPE_CHECKING:
    from cowfs.fs.history import CellRun
    from cowfs.fs.tree import Tree


class Context:
    """The store a command works on: --store, else COWFS_STORE, else the mount the working
    directory is in, else the default store."""

    def __init__(self, store: str | None = None) -> None:
        self.explicit = store

    @property
    def store_path(self) -> Path:
        return resolve_store_path(self.explicit)

    def open_store(self, readonly: bool = False) -> Store:
        from cowfs.fs.remote.lazy import install_fetcher

        store = open_store(self.store_path, readonly=readonly)
        install_fetcher(store)  # files of lazily pulled snapshots read like any other
        return store


def fail(message: str) -> None:
    raise click.ClickException(message)


def _choose_store(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """`--store` after the command name (as restic takes -r anywhere) wins over the one before."""
    if value is not None:
        ctx.ensure_object(Context).explicit = value


def store_option() -> click.Option:
    return click.Option(["--store"], expose_value=False, is_eager=True, callback=_choose_store,
                        help="Store directory (default: $COWFS_STORE, else $XDG_DATA_HOME/cowfs/default).")


class CowfsGroup(click.Group):
    """Turns every error into one line on stderr and a non-zero exit: the ones a user can fix
    say what to do; a bug says where to look (COWFS_DEBUG=1 shows the traceback)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.append(store_option())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (StoreError, DaemonError) as exc:
            raise click.ClickException(str(exc)) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("cowfs: interrupted; what was already done is kept, and nothing was half-written", err=True)
            sys.exit(130)
        except OSError as exc:
            if os.environ.get("COWFS_DEBUG"):
                raise
            raise click.ClickException(describe_os_error(exc)) from None
        except Exception as exc:
            if os.environ.get("COWFS_DEBUG"):
                raise
            raise click.ClickException(f"internal error ({type(exc).__name__}: {exc}); nothing was changed "
                                       "after it. Run again with COWFS_DEBUG=1 for the traceback, and report it") from None


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError, with what the user can do about the common ones."""
    where = f": {exc.filename}" if exc.filename else ""
    what = f"{exc.strerror or exc}{where}"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"{what}. It belongs to another user or its permissions keep you out; "
                "use your own store and mounts (`cowfs init`, then `cowfs mount ~/work`)")
    if exc.errno == errno.EROFS:
        return f"{what}. The store is on a read-only filesystem; only reading commands (log, diff, fsck) work there"
    if exc.errno == errno.ENOSPC:
        return f"{what}. The disk is full: free space (`cowfs prune` and `cowfs gc` help), then try again"
    if exc.errno == errno.ENOTCONN:
        return f"{what}. A cowfs mount here has lost its daemon; `cowfs umount` it, then mount it again"
    return what


@click.group(cls=CowfsGroup)
@click.option("--store", envvar="COWFS_STORE", help="Store directory (default: $XDG_DATA_HOME/cowfs/default).")
@click.pass_context
def cli(ctx: click.Context, store: str | None) -> None:
    """cowfs: a copy-on-write, versioned workspace with cheap snapshots."""
    context = ctx.ensure_object(Context)
    if context.explicit is None:
        context.explicit = store


@cli.command()
@click.option("--import", "source", type=click.Path(path_type=Path),
              help="Copy this directory in as the first snapshot of main.")
@click.pass_obj
def init(context: Context, source: Path | None) -> None:
    """Create a store (optionally from an existing directory)."""
    from cowfs.cli.importer import import_directory

    path = context.store_path
    if source is not None and not source.is_dir():
        fail(f"cannot import {source}: it is not a directory")
    try:
        store = Store.init(path)
    except StoreError as exc:
        if (path / "index.lmdb").exists() and source is None:
            click.echo(f"{path} is already a cowfs store")
            return
        raise exc
    try:
        click.echo(f"created store {path}")
        if source is not None:
            with progress_on_terminal() as progress:
                report = import_directory(store, source.absolute(), progress)
            click.echo(f"imported {report.files} files, {report.directories} directories and {report.links} "
                       f"hard links ({human_size(report.bytes)}) from {source} as snapshot {report.snapshot.name}")
    finally:
        store.close()


@cli.command()
@click.argument("source", required=False)
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--branch", help="Branch to mount (default main); with SOURCE, the new branch's name.")
@click.option("--allow-other", is_flag=True, help="Let other users see the mount (needs user_allow_other).")
@click.option("--xattrs", is_flag=True,
              help="Support extended attributes. Off by default: with them the kernel asks the daemon "
                   "before every write() call, and small writes get up to 5x slower. A branch that "
                   "already holds xattrs always has them.")
@click.option("--cache-size", default="4G", show_default=True,
              help="For REMOTE:SNAPSHOT: the most the chunks read from the remote may take on disk.")
@click.option("--foreground", is_flag=True, help="Stay attached and log to the terminal.")
@click.option("--debug", is_flag=True, help="Log every request (slow).")
@click.pass_obj
def mount(context: Context, source: str | None, mountpoint: Path | None, branch: str | None,
          allow_other: bool, xattrs: bool, foreground: bool, debug: bool, cache_size: str = "4G") -> None:
    """Mount the workspace at MOUNTPOINT, or snapshot SOURCE as a new read-write branch.

    \b
      cowfs mount ~/work              the main branch (or --branch NAME)
      cowfs mount @12 ~/back          snapshot @12 as a new branch; @12 never changes
      cowfs mount team:ID ~/alice     a remote snapshot, without downloading its data:
                                      reading a file fetches its chunks (cached, verified)
    """
    if mountpoint is None:
        if source is None:
            fail("give a mount point: `cowfs mount DIR` or `cowfs mount SNAPSHOT DIR`")
        source, mountpoint = None, Path(source)
    mountpoint = Path(os.path.realpath(mountpoint))
    cache_bytes = _parse_size(cache_size)
    store = context.open_store()
    created = False
    try:
        # Everything that can be refused is checked before anything is made.
        remote_name, _, remote_ref = (source or "").partition(":")
        lazy = bool(remote_ref) and remote_name in _remote_names(store)
        if lazy:
            _check_mountpoint_free(mountpoint)
            record = _lazy_pull(store, remote_name, remote_ref)
        else:
            record = store.resolve_snapshot(source) if source is not None else None
        if record is None:
            chosen = store.branch_named(branch or MAIN_BRANCH)
        elif branch is not None:
            check_branch_name(branch)
        created = _check_mountpoint(mountpoint)
        if record is not None:
            chosen = store.fork(record, branch)
        note = f" (new branch from snapshot {record.name})" if record is not None else ""
        if lazy:
            note = (f" (new branch from {remote_name}:{record.meta['remote_id']}, here as {record.name}; "
                    "files are fetched as they are read)")
    except BaseException:
        if created:
            mountpoint.rmdir()
        raise
    finally:
        store.close()
    try:
        launcher.start_daemon(store.path, chosen.name, mountpoint, allow_other=allow_other, xattrs=xattrs,
                              foreground=foreground, debug=debug, remote_cache=cache_bytes if lazy else None)
    except BaseException:
        if created and not launcher.is_mounted(mountpoint):
            mountpoint.rmdir()
        raise
    click.echo(f"mounted branch {chosen.name} at {mountpoint}{note}")


@cli.command("open")
@click.argument("snapshot")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.pass_context
def open_snapshot(ctx: click.Context, snapshot: str, directory: Path | None) -> None:
    """Go back to a cell: mount SNAPSHOT as a new branch (default: beside its workspace, as
    WORKSPACE-at-N), and the first kernel started there gets that moment's variables back."""
    context: Context = ctx.obj
    store = context.open_store(readonly=True)
    try:
        record = store.resolve_snapshot(snapshot)
        has_variables = bool(record.meta.get("vars") or record.meta.get("vars_from"))
        if directory is None:
            directory = _beside_workspace(store, record)
    finally:
        store.close()
    ctx.invoke(mount, source=record.name, mountpoint=directory, branch=None, allow_other=False, xattrs=False,
               foreground=False, debug=False)
    if has_variables:
        from cowfs.cli.kernel.vars_format import RESTORE_ON_START

        marker = Path(os.path.realpath(directory)) / RESTORE_ON_START
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(json.dumps({"snapshot": record.name}))
        click.echo(f"the first IPython kernel started in {directory} restores the variables of {record.name}")


def _beside_workspace(store: Store, record: SnapshotRecord) -> Path:
    """WORKSPACE-at-N next to the mount of the snapshot's branch, else ./cowfs-at-N."""
    for entry in cowfs_mounts():
        try:
            status = request(entry.mountpoint, {"op": "status"}, timeout=5)
        except DaemonError:
            continue
        if status.get("store") == str(store.path) and status.get("branch_id") == record.branch:
            return Path(f"{entry.mountpoint}-at-{record.id}")
    return Path.cwd() / f"cowfs-at-{record.id}"


def _parse_size(text: str) -> int:
    from cowfs.fs.remote.cache import MINIMUM_LIMIT

    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("IB"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        size = int(float(number) * units[unit])
    except ValueError:
        fail(f"{text!r} is not a size; write it like 512M or 4G")
    if size < MINIMUM_LIMIT:
        fail(f"a cache of {text} cannot hold what one read fetches; give at least {MINIMUM_LIMIT >> 20}M")
    return size


def _remote_names(store: Store) -> set[str]:
    from cowfs.fs.remote.bucket import load_remotes

    return set(load_remotes(store))


def _lazy_pull(store: Store, remote_name: str, ref: str) -> SnapshotRecord:
    """The local snapshot standing for a remote one, made without its data when not here yet."""
    from cowfs.cli.remote import pull as pull_snapshot
    from cowfs.fs.remote.bucket import remote_named

    with progress_on_terminal(False) as progress:
        report = pull_snapshot(store, remote_named(store, remote_name), ref, progress, lazy=True)
    return store.resolve_snapshot(report.local_snapshot)


def _check_mountpoint_free(mountpoint: Path) -> None:
    """Refuse a mount point in use before a lazy pull makes anything."""
    if launcher.is_mounted(mountpoint) and launcher.daemon_alive(mountpoint):
        fail(f"{mountpoint} is already mounted; `cowfs umount {mountpoint}` first")
    if mountpoint.is_dir() and any(mountpoint.iterdir()):
        fail(f"mount point {mountpoint} is not empty; cowfs mounts only on an empty directory")


def _check_mountpoint(mountpoint: Path) -> bool:
    """Refuse a mount point cowfs cannot use; True when it was missing and is now made."""
    if launcher.is_mounted(mountpoint):
        launcher.refuse_foreign(mountpoint)
        if launcher.daemon_alive(mountpoint):
            fail(f"{mountpoint} is already mounted; `cowfs umount {mountpoint}` first")
        click.echo(f"clearing a stale mount at {mountpoint} (its daemon had died)", err=True)
        launcher.detach_stale(mountpoint)
    if not mountpoint.exists() and not mountpoint.is_symlink():
        if not mountpoint.parent.is_dir():
            fail(f"cannot create mount point {mountpoint}: {mountpoint.parent} does not exist")
        mountpoint.mkdir(mode=0o700)  # only the last component, as `git worktree add` does
        return True
    if not mountpoint.is_dir():
        fail(f"mount point {mountpoint} is not a directory; give an empty directory or a new name")
    if any(mountpoint.iterdir()):
        fail(f"mount point {mountpoint} is not empty; cowfs mounts only on an empty directory. To bring its "
             f"files into a new store: `mv {mountpoint} {mountpoint}.orig && cowfs init --import "
             f"{mountpoint}.orig && cowfs mount {mountpoint}`")
    return False


@cli.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount(mountpoint: Path) -> None:
    """Flush everything and unmount."""
    mountpoint = Path(os.path.realpath(mountpoint))
    if not any(entry.mountpoint == str(mountpoint) for entry in cowfs_mounts()):
        fail(f"{mountpoint} is not a cowfs mount point; `cowfs status` lists them")
    outcome, pid = launcher.stop_daemon(mountpoint)
    if outcome == "stopped":
        click.echo(f"unmounted {mountpoint}")
    elif outcome == "detached":
        click.echo(f"unmounted {mountpoint}; it was busy, so the daemon (pid {pid}) keeps serving the "
                   "processes still using it and exits when they are done")
    else:
        click.echo(f"{mountpoint}: its daemon had died; cleared the stale mount. Data written in the last "
                   "seconds before it died may be missing; every snapshot is intact.", err=True)


@cli.command()
@click.option("-m", "--message", "label", default="", help="A label to find the snapshot by.")
@click.option("--wait", is_flag=True, help="Return only once the snapshot is durable on disk.")
@click.option("--json", "as_json", is_flag=True, help="Print the snapshot as JSON.")
@click.argument("path", required=False, default=".")
def snap(label: str, wait: bool, as_json: bool, path: str) -> None:
    """Take a snapshot of the mount holding PATH (default: the working directory)."""
    record = take_snapshot(mount_for(path).mountpoint, label, wait=wait)
    if as_json:
        emit_json(record)
    else:
        click.echo(record["id"])


def _branch_names(store: Store) -> dict[int, str]:
    return {branch.id: branch.name for branch in store.branches()}


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("-n", "--limit", type=int, default=0, help="Show only the newest N entries.")
@click.option("--branch", help="Only snapshots of this branch.")
@click.option("--cells", is_flag=True, help="One line per executed notebook cell.")
@click.option("--remote", "remote_name", help="List what this remote holds instead.")
@click.pass_obj
def log(context: Context, as_json: bool, limit: int, branch: str | None, cells: bool,
        remote_name: str | None) -> None:
    """List snapshots (or, with --cells, executed cells), newest first."""
    from cowfs.fs.history import cell_runs

    if remote_name:
        _log_remote(context, remote_name, as_json, limit, cells)
        return
    store = context.open_store(readonly=True)
    try:
        names = _branch_names(store)
        records = store.snapshots()
        if branch:
            wanted = store.branch_named(branch).id
            records = [r for r in records if r.branch == wanted]
        if cells:
            _log_cells(store, cell_runs(records)[::-1][:limit or None], names, as_json)
            return
    finally:
        store.close()
    # Companion snapshots hold variables written in the background; `log --cells` reports them.
    records = [r for r in records if r.meta.get("kind") != "vars"][::-1][:limit or None]
    if as_json:
        emit_json([{**describe(r), "branch_name": names.get(r.branch)} for r in records])
        return
    table([[r.name, human_time(r.created), names.get(r.branch, "?"),
            f"= {format_snapshot_id(r.same_as)}" if r.same_as else human_size(r.bytes_added), r.label]
           for r in records], ["ID", "TIME", "BRANCH", "ADDED", "LABEL"])


def _log_cells(store: Store, runs: list[CellRun], names: dict[int, str], as_json: bool) -> None:
    from cowfs.fs.history import cell_row

    by_name = {r.name: r for r in store.snapshots()}
    rows = [cell_row(store, run, names, by_name) for run in runs]
    if as_json:
        emit_json(rows)
        return
    table([[f"{r['before'] or '-'}..{r['after']}", human_time(r["time"]), os.path.basename(r["notebook"] or "-"),
            f"[{r['execution_count']}]", "ok" if r["success"] else (r["error"] or "error").split(":")[0],
            "no change" if not r["files_changed"] else f"{r['files_changed']} changed", human_size(r["bytes_added"]),
            (r["variables"] or "-").split(":")[0], r["first_line"][:60]] for r in rows],
          ["SNAPSHOTS", "TIME", "NOTEBOOK", "CELL", "RESULT", "FILES", "ADDED", "VARIABLES", "FIRST LINE"])


@cli.command()
@click.argument("path")
@click.option("--branch", help="Branch to look in when PATH is not inside a mount (default main).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def blame(context: Context, path: str, branch: str | None, as_json: bool) -> None:
    """Which snapshots (which cells) changed PATH."""
    from cowfs.fs.history import blame as history_blame

    relative, branch_name = _workspace_path(path, branch)
    store = context.open_store(readonly=True)
    try:
        found = history_blame(store, store.branch_named(branch_name).id, os.fsencode(relative))
    finally:
        store.close()
    if as_json:
        emit_json([{**describe(record), "change": how} for record, how in found])
        return
    if not found:
        click.echo(f"no snapshot of branch {branch_name} changed {relative}")
    for record, how in found:
        click.echo(f"{record.name}  {human_time(record.created)}  {how:8}  {record.label}")


def _workspace_path(path: str, branch: str | None) -> tuple[str, str]:
    """PATH inside a mount -> (path from the mount's root, the mount's branch)."""
    try:
        entry = mount_for(path if os.path.exists(path) else os.path.dirname(os.path.abspath(path)) or ".")
    except DaemonError:
        return path.strip("/"), branch or MAIN_BRANCH
    status = request(entry.mountpoint, {"op": "status"}, timeout=10)
    return os.path.relpath(os.path.abspath(path), entry.mountpoint), branch or status["branch"]


def _tree_at(store: Store, ref: str) -> tuple[SnapshotRecord, Tree]:
    from cowfs.fs.tree import Tree

    record = store.resolve_snapshot(ref)
    return record, Tree.at_snapshot(store, record)


@cli.command()
@click.argument("before")
@click.argument("after")
@click.option("--json", "as_json", is_flag=True)
@click.option("--all", "show_all", is_flag=True, help="Include cowfs's own .cowfs/ directory (saved variables).")
@click.option("--walk", is_flag=True, help="Compare every path, even when the later snapshot named its changes.")
@click.option("--patch", is_flag=True, help="Show a unified diff of each small text file that changed.")
@click.pass_obj
def diff(context: Context, before: str, after: str, as_json: bool, show_all: bool, walk: bool,
         patch: bool) -> None:
    """Paths added, removed or modified between two snapshots."""
    from cowfs.fs.diff import diff_trees, snapshot_diff, text_patch
    from cowfs.fs.history import is_cowfs_own

    store = context.open_store(readonly=True)
    try:
        (old, tree_before), (new, tree_after) = _tree_at(store, before), _tree_at(store, after)
        changes = diff_trees(tree_before, tree_after) if walk else snapshot_diff(old, tree_before, new, tree_after)
        if not show_all:
            changes = [c for c in changes if not is_cowfs_own(c.path)]
        patches = {c.path: text_patch(tree_before, tree_after, c) for c in changes} if patch else {}
    finally:
        store.close()
    if as_json:
        emit_json([change.__dict__ | ({"patch": patches[change.path]} if patch else {}) for change in changes])
        return
    marks = {"added": "+", "removed": "-", "modified": "M"}
    for change in changes:
        sizes = f"{human_size(change.size_before)} -> {human_size(change.size_after)}"
        click.echo(f"{marks[change.kind]} {change.path}  ({sizes})")
        if patches.get(change.path):
            click.echo(patches[change.path].rstrip("\n"))


def _directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(context: Context, as_json: bool) -> None:
    """Mounts, branches, store size, and the dedup and compression ratios."""
    live = []
    for entry in cowfs_mounts():
        try:
            live.append(request(entry.mountpoint, {"op": "status"}, timeout=5))
        except DaemonError as exc:
            live.append({"mountpoint": entry.mountpoint, "error": str(exc)})
    store = context.open_store(readonly=True)
    try:
        stats = store.stats()
        branches = store.branches()
        snapshot_count = len(store.snapshots())
        document = {
            "store": str(store.path),
            "store_bytes": _directory_bytes(store.path),
            "mounts": live,
            "branches": [{"name": b.name, "id": b.id, "head": b.head, "source_snapshot": b.source_snapshot}
                         for b in branches],
            "snapshots": snapshot_count,
            "needs_fsck": (store.path / NEEDS_FSCK).exists(),
            "uncompressed_packs": len(store.uncompressed_packs()),
            **stats,
            "dedup_ratio": round(stats["logical_bytes"] / stats["chunk_raw_bytes"], 3)
            if stats["chunk_raw_bytes"] else 1.0,
            "compression_ratio": round(stats["chunk_raw_bytes"] / stats["chunk_stored_bytes"], 3)
            if stats["chunk_stored_bytes"] else 1.0,
            "speed_advice": idle_cpus.advice(idle_cpus.read_idle_policy()),
        }
    finally:
        store.close()
    if as_json:
        emit_json(document)
        return
    click.echo(f"store      {document['store']}  ({human_size(document['store_bytes'])} on disk)")
    click.echo(f"snapshots  {snapshot_count}")
    if document["needs_fsck"]:
        click.echo(f"DAMAGE     a daemon met damaged data (see {store.path / NEEDS_FSCK}); run `cowfs fsck`")
    click.echo(f"data       {human_size(stats['logical_bytes'])} written, {human_size(stats['chunk_raw_bytes'])} "
               f"unique, {human_size(stats['chunk_stored_bytes'])} stored (dedup x{document['dedup_ratio']}, "
               f"compression x{document['compression_ratio']})")
    if document["uncompressed_packs"]:
        click.echo(f"pending    {document['uncompressed_packs']} packs written raw to keep up; compressed once "
                   "their mount is idle, or by `cowfs gc`")
    if document["speed_advice"]:
        click.echo(f"speed      {document['speed_advice']}")
    click.echo("mounts")
    for mount in live:
        elsewhere = f"  (store {mount['store']})" if mount.get("store", document["store"]) != document["store"] else ""
        click.echo(f"  {mount['mountpoint']}  " + (f"branch {mount['branch']}  pid {mount['pid']}{elsewhere}"
                                                  if "branch" in mount else mount.get("error", "")))
    click.echo("branches")
    for branch in branches:
        origin = f"  from {branch.source_snapshot}" if branch.source_snapshot else ""
        click.echo(f"  {branch.name}{origin}")


@cli.command()
@click.option("--repair", is_flag=True, help="Fix what can be fixed without guessing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def fsck(context: Context, repair: bool, as_json: bool) -> None:
    """Verify every chunk, reference, version chain and tree of the store; exit 1 on damage."""
    from cowfs.fs.fsck import check as fsck_check

    store = context.open_store(readonly=not repair)
    try:
        with progress_on_terminal(as_json) as progress:
            report = fsck_check(store, repair=repair, progress=progress)
        if repair and report.clean:
            (store.path / NEEDS_FSCK).unlink(missing_ok=True)
    finally:
        store.close()
    if as_json:
        emit_json(report.__dict__ | {"clean": report.clean})
    else:
        for line in report.repaired:
            click.echo(f"repaired: {line}")
        for line in report.damage:
            click.echo(f"DAMAGE: {line}")
        for line in report.notes:
            click.echo(f"note: {line}")
        click.echo(f"checked {report.chunks_checked} chunks and {report.trees_checked} trees: "
                   + ("no damage" if report.clean else f"{len(report.damage)} problem(s)"))
    if not report.clean:
        sys.exit(1)


@cli.command()
@click.argument("snapshots", nargs=-1, required=True)
@click.pass_obj
def rm(context: Context, snapshots: tuple[str, ...]) -> None:
    """Delete snapshots (their space returns at the next `cowfs gc`)."""
    from cowfs.fs.retention import remove_snapshots

    store = context.open_store()
    try:
        records = [store.resolve_snapshot(ref) for ref in snapshots]
        remove_snapshots(store, records)
    finally:
        store.close()
    click.echo(f"removed {', '.join(r.name for r in records)}; run `cowfs gc` to reclaim their space")


@cli.command()
@click.argument("snapshot")
@click.pass_obj
def pin(context: Context, snapshot: str) -> None:
    """Keep a snapshot whatever prune says."""
    _set_pin(context, snapshot, True)


@cli.command()
@click.argument("snapshot")
@click.pass_obj
def unpin(context: Context, snapshot: str) -> None:
    """Let prune remove a snapshot again."""
    _set_pin(context, snapshot, False)


def _set_pin(context: Context, ref: str, pinned: bool) -> None:
    from cowfs.fs.retention import set_pinned

    record = _rewrite_snapshot(context, ref, lambda store, found: set_pinned(store, found, pinned))
    click.echo(f"{record.name} {'pinned' if pinned else 'unpinned'}")


def _rewrite_snapshot(context: Context, ref: str, change) -> SnapshotRecord:
    store = context.open_store()
    try:
        return change(store, store.resolve_snapshot(ref))
    finally:
        store.close()


@cli.command()
@click.argument("snapshot")
@click.argument("text")
@click.pass_obj
def label(context: Context, snapshot: str, text: str) -> None:
    """Give SNAPSHOT a label to find it by (`cowfs mount TEXT DIR`); an empty TEXT removes it."""
    from cowfs.fs.retention import set_label

    record = _rewrite_snapshot(context, snapshot, lambda store, found: set_label(store, found, text))
    click.echo(f"{record.name} labelled {record.label!r}" if record.label else f"{record.name}: label removed")


@cli.command()
@click.option("--keep-last", type=int, default=0, help="Keep the newest N of each branch.")
@click.option("--keep-within", default=None, help="Keep everything newer than this (90m, 12h, 1d, 2w).")
@click.option("--keep-hourly", type=int, default=0, help="Keep the newest of each of the last N hours.")
@click.option("--keep-daily", type=int, default=0, help="Keep the newest of each of the last N days.")
@click.option("--dry-run", is_flag=True, help="Say what would go, remove nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def prune(context: Context, keep_last: int, keep_within: str | None, keep_hourly: int, keep_daily: int,
          dry_run: bool, as_json: bool) -> None:
    """Remove the snapshots a retention policy does not keep (pinned ones and branch origins stay)."""
    from cowfs.fs.retention import Policy, parse_duration, plan_prune, protected, remove_snapshots

    policy = Policy(keep_last, parse_duration(keep_within) if keep_within else 0.0, keep_hourly, keep_daily)
    if policy.empty:
        fail("give at least one --keep-* option; prune without a policy would remove every snapshot")
    store = context.open_store()
    try:
        snapshots = store.snapshots()
        keep, remove = plan_prune(snapshots, policy, time.time(), set(protected(store, snapshots)))
        if not dry_run and remove:
            with progress_on_terminal(as_json) as progress:
                progress(f"removing {len(remove)} snapshots", 0, len(remove))
                remove_snapshots(store, remove)
    finally:
        store.close()
    if as_json:
        emit_json({"kept": [r.name for r in keep], "removed": [r.name for r in remove], "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"kept {len(keep)} snapshots, {verb} {len(remove)}"
               + ("" if dry_run or not remove else "; run `cowfs gc` to reclaim their space"))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def gc(context: Context, as_json: bool) -> None:
    """Reclaim the space of removed snapshots and overwritten data (safe while mounted)."""
    from cowfs.fs.gc import collect_garbage

    path = context.store_path
    for entry in cowfs_mounts():  # live daemons of this store finish their packs so gc can rewrite them
        try:
            if request(entry.mountpoint, {"op": "status"}, timeout=5)["store"] == str(path):
                request(entry.mountpoint, {"op": "rotate"}, timeout=30)
        except DaemonError:
            pass
    store = Store.open(path)
    try:
        with progress_on_terminal(as_json) as progress:
            report = collect_garbage(store, progress)
    finally:
        store.close()
    if as_json:
        emit_json(report.__dict__)
        return
    for problem in report.problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"removed {report.versions_removed} record versions and {report.chunks_removed} chunks, "
               f"compressed {report.packs_compressed} packs written raw, "
               f"rewrote {report.packs_rewritten} packs, deleted {report.packs_deleted}: "
               f"{human_size(report.bytes_before)} -> {human_size(report.bytes_after)}")


def _log_remote(context: Context, remote_name: str, as_json: bool, limit: int, cells: bool) -> None:
    from cowfs.cli.remote import remote_snapshots
    from cowfs.fs.remote.bucket import Bucket

    found = [s for s in remote_snapshots(Bucket(_remote_config(context, remote_name))) if s["meta"].get("kind") != "vars"][::-1][:limit or None]
    if cells:
        found = [s for s in found if s["meta"].get("cell")]
    if as_json:
        emit_json(found)
        return
    table([[s["id"], human_time(s["created"]), s["source"]["snapshot"],
            (f"[{s['meta']['cell'].get('execution_count')}] " if s["meta"].get("cell") else "") + s["label"]]
           for s in found], ["ID", "CREATED", "FROM", "LABEL"])


@cli.group()
def remote() -> None:
    """S3-compatible remotes: where snapshots go to be shared (credentials the AWS way)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--endpoint-url", help="An S3-compatible endpoint (MinIO, Ceph, R2...); else AWS_ENDPOINT_URL or AWS.")
@click.pass_obj
def remote_add(context: Context, name: str, url: str, endpoint_url: str | None) -> None:
    """Name a bucket and prefix: `cowfs remote add team s3://bucket/prefix`."""
    from cowfs.fs.remote.bucket import RemoteConfig, load_remotes, save_remotes
    from cowfs.fs.store import check_branch_name

    check_branch_name(name)  # remote names become branch names of pulled snapshots
    config = RemoteConfig(name, url, endpoint_url)
    config.bucket_and_prefix  # noqa: B018 -- refuses an address that is not s3://bucket/...
    store = context.open_store()
    try:
        remotes = load_remotes(store)
        remotes[name] = config
        save_remotes(store, remotes)
    finally:
        store.close()
    click.echo(f"remote {name}: {url}" + (f" at {endpoint_url}" if endpoint_url else ""))


@remote.command("list")
@click.pass_obj
def remote_list(context: Context) -> None:
    """The remotes of this store."""
    from cowfs.fs.remote.bucket import load_remotes

    store = context.open_store(readonly=True)
    try:
        for config in load_remotes(store).values():
            click.echo(f"{config.name}  {config.url}" + (f"  ({config.endpoint_url})" if config.endpoint_url else ""))
    finally:
        store.close()


def _remote_config(context: Context, name: str):
    from cowfs.fs.remote.bucket import remote_named

    store = context.open_store(readonly=True)
    try:
        return remote_named(store, name)
    finally:
        store.close()


def _current_branch(store: Store) -> str:
    """The branch of the mount holding the working directory, when it is one of this store's."""
    try:
        status = request(mount_for(os.getcwd()).mountpoint, {"op": "status"}, timeout=5)
    except DaemonError:
        return MAIN_BRANCH
    return status["branch"] if status.get("store") == str(store.path) else MAIN_BRANCH


def _exchange(context: Context, remote_name: str, as_json: bool, work):
    """Run a push or pull on the store and a remote; prints the JSON report (and returns None)
    with --json, else returns the report for the command to describe."""
    from cowfs.fs.remote.bucket import remote_named

    store = context.open_store()
    try:
        config = remote_named(store, remote_name)
        with progress_on_terminal(as_json) as progress:
            report = work(store, config, progress)
    finally:
        store.close()
    if as_json:
        emit_json(report.__dict__)
        return None
    return report


@remote.command("forget")
@click.argument("remote_name")
@click.argument("snapshots", nargs=-1, required=True)
@click.pass_obj
def remote_forget(context: Context, remote_name: str, snapshots: tuple[str, ...]) -> None:
    """Remove snapshots from a remote (their space returns at the next `cowfs remote gc`)."""
    from cowfs.cli.remote import forget

    removed = forget(_remote_config(context, remote_name), snapshots)
    click.echo(f"removed {', '.join(removed)} from {remote_name}; `cowfs remote gc {remote_name}` reclaims the space")


@remote.command("gc")
@click.argument("remote_name")
@click.option("--grace", default="6h", show_default=True,
              help="Keep unreferenced packs younger than this: a push uploads packs before its snapshot.")
@click.option("--dry-run", is_flag=True, help="Say what would go, delete nothing.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def remote_gc(context: Context, remote_name: str, grace: str, dry_run: bool, as_json: bool) -> None:
    """Delete the remote packs no remote snapshot needs (safe beside pushes from other machines)."""
    from cowfs.cli.remote import collect_remote_garbage
    from cowfs.fs.retention import parse_duration

    config = _remote_config(context, remote_name)
    with progress_on_terminal(as_json) as progress:
        report = collect_remote_garbage(config, parse_duration(grace), dry_run, progress)
    if as_json:
        emit_json(report.__dict__)
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{remote_name}: {report.snapshots} snapshots; {verb} {report.packs_deleted} packs "
               f"({human_size(report.bytes_freed)}); kept {report.packs_kept_young} unreferenced packs younger "
               f"than {grace}")


@cli.command()
@click.argument("remote_name")
@click.argument("snapshots", nargs=-1)
@click.option("--branch", help="Push this branch's snapshots (default: that of the mount you are in, else main).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def push(context: Context, remote_name: str, snapshots: tuple[str, ...], branch: str | None, as_json: bool) -> None:
    """Send snapshots (default: every durable one of the branch) and the chunks the remote lacks."""
    from cowfs.cli.remote import push as push_snapshots
    from cowfs.fs.history import is_durable

    def send(store: Store, config, progress):
        if snapshots:
            records = [store.resolve_snapshot(ref) for ref in snapshots]
        else:
            wanted = store.branch_named(branch or _current_branch(store)).id
            records = [r for r in store.snapshots() if r.branch == wanted and is_durable(store, r)]
        return push_snapshots(store, config, records, progress)

    report = _exchange(context, remote_name, as_json, send)
    if report is None:
        return
    click.echo(f"pushed {len(report.pushed)} snapshots to {remote_name} ({len(report.already_there)} were there): "
               f"{report.chunks_sent} chunks, {human_size(report.bytes_uploaded)} uploaded in {report.seconds:.1f} s")


@cli.command()
@click.argument("remote_name")
@click.argument("snapshot")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def pull(context: Context, remote_name: str, snapshot: str, as_json: bool) -> None:
    """Fetch a remote snapshot (and only the chunks this store lacks) as a local snapshot."""
    from cowfs.cli.remote import pull as pull_snapshot

    report = _exchange(context, remote_name, as_json,
                       lambda store, config, progress: pull_snapshot(store, config, snapshot, progress))
    if report is None:
        return
    click.echo(f"pulled {report.snapshot} as {report.local_snapshot} (branch {report.branch}): {report.files} files, "
               f"{report.chunks_fetched} chunks, {human_size(report.bytes_downloaded)} downloaded; "
               f"`cowfs mount {report.local_snapshot} DIR` opens it")


@cli.group()
def kernel() -> None:
    """Snapshot every notebook cell: load the extension in every IPython kernel."""


@kernel.command("install")
def kernel_install() -> None:
    """Every IPython kernel of this user loads cowfs (like %load_ext cowfs)."""
    from cowfs.cli import kernel_install as installer

    click.echo(f"installed {installer.install()}; new kernels snapshot every cell inside a cowfs mount")


@kernel.command("uninstall")
def kernel_uninstall() -> None:
    """Stop loading the extension in new kernels."""
    from cowfs.cli import kernel_install as installer

    removed = installer.uninstall()
    click.echo(f"removed {removed}" if removed else "the extension was not installed")


def main() -> None:
    cli(prog_name="cowfs")


if __name__ == "__main__":
    sys.exit(main())
