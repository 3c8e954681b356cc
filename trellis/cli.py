"""`trellis`: the lab and inspection CLI. Exit codes as kubectl: 0 ok, 1 failure or
unreachable, 2 usage. Fetching and rendering live in inspect.py / output.py."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import click

from . import inspect as insp
from .output import FORMATS, render

OUTPUT = click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)


def _fail(msg: str) -> None:
    raise click.ClickException(msg)


def _resources():
    try:
        from meshcore import resources
    except ImportError as exc:
        _fail(f"meshcore.resources is not available ({exc}); config validation needs it")
    return resources


PLUGIN_GROUP = "trellis.commands"


class PluginGroup(click.Group):
    """Commands of other packages, registered as entry points (group `trellis.commands`,
    e.g. `bench = "bench.cli:bench"` in pyproject.toml) and imported only when run or
    listed: the CLI does not know them, and `trellis lab` never loads the bench suite."""

    def _plugins(self) -> dict:
        return {ep.name: ep for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := self._plugins()):
            command = plugins[name].load()
        return command


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Trellis: a sidecarless service mesh. Lab, validation and inspection."""


@cli.command()
@click.argument("directory", metavar="PATH", type=click.Path(exists=True, path_type=Path))
def validate(directory: Path) -> None:
    """Check every resource in PATH (a config directory or one YAML file) as the control
    plane would, cross-object rules included; one line per error.

    A lab directory (with lab.yaml) is checked whole: lab.yaml and its config/."""
    from .lab.topology import LabConfigError, load_lab, plan
    errors: list[str] = []
    if (directory / "lab.yaml").exists():
        try:
            plan(load_lab(directory))
        except LabConfigError as exc:
            # "file: field: message" -> "file: Lab: field: message", the shape of resource errors
            errors += [": Lab: ".join(line.split(": ", 1)) for line in exc.errors]
        for line in errors:
            click.echo(line)
        directory = directory / "config" if (directory / "config").is_dir() else None
    count = 0
    if directory is not None:
        from controlplane.sources import settle
        res = _resources()
        result = res.load_dir(directory) if directory.is_dir() else res.load_file(directory)
        _, problems = settle(result.resources, result.errors)   # what the control plane reports
        errors += [str(e) for e in problems]
        count = len(result.resources)
        for e in problems:
            click.echo(str(e))
        _warn(result.resources)
    if errors:
        sys.exit(1)
    click.echo(f"valid: {count} resource(s)")


def _cluster_options(fn):
    """Where the ztunnels are in a cluster; any of these picks the cluster over the lab."""
    fn = click.option("-n", "--namespace", help="the mesh's namespace [default: trellis-system]")(fn)
    fn = click.option("--context", help="the kubeconfig context [default: its current-context]")(fn)
    return click.option("--kubeconfig", type=click.Path(path_type=Path),
                        help="inspect a cluster through the API server's pod proxy [default: KUBECONFIG, "
                             "~/.kube/config, when no lab runs]")(fn)


def _targets(node, admin_addr, kube: tuple, control_plane: bool = False) -> list:
    """--admin, else the cluster when asked for (or when no lab runs and a kubeconfig
    exists), else the running lab."""
    from .deploy.kubeconfig import _default_path
    from .lab import state
    asked = any(x is not None for x in kube)
    if admin_addr and asked:
        raise click.UsageError("--admin excludes --kubeconfig/--context/--namespace")
    cluster = not admin_addr and (asked or (state.load() is None and _default_path().exists()))
    if cluster and control_plane:
        raise click.UsageError("--control-plane is for the lab or --admin; in a cluster inspect the ztunnels")
    try:
        if cluster:
            from . import kubeinspect
            return kubeinspect.targets(kubeconfig_path=kube[0], context=kube[1], namespace=kube[2], node=node)
        return insp.targets(node=node, control_plane=control_plane, admin_addr=admin_addr)
    except (insp.InspectError, ValueError) as exc:
        _fail(str(exc))


def _inspect_command(kind: str):
    path, key, columns, shape = insp.KINDS[kind]

    @click.option("--node", help="only this node's ztunnel (default: every node)")
    @click.option("--admin", "admin_addr", metavar="HOST:PORT", help="a ztunnel admin address outside the lab")
    @_cluster_options
    @OUTPUT
    def command(node: str | None, admin_addr: str | None, kubeconfig: Path | None, context: str | None,
                namespace: str | None, fmt: str) -> None:
        ts = _targets(node, admin_addr, (kubeconfig, context, namespace))
        rows, errors = insp.collect(ts, path, key)
        rows = shape(rows, insp.serving_by_target(ts)) if kind == "workloads" else shape(rows)
        click.echo(render(rows, fmt, columns))
        for e in errors:
            click.echo(f"error: {e}", err=True)
        if errors:
            sys.exit(1)

    command.__doc__ = f"List {kind} as ztunnel sees them (GET {path})."
    if kind == "pods":
        command.__doc__ = "Pods whose netns ztunnel holds (GET /pods): state, listeners, connections."
    return cli.command(kind)(command)


for _kind in insp.KINDS:
    _inspect_command(_kind)


@cli.command("config-dump")
@click.option("--node", help="this node's ztunnel")
@click.option("--control-plane", is_flag=True, help="the control plane instead of a ztunnel")
@click.option("--admin", "admin_addr", metavar="HOST:PORT", help="an admin address outside the lab")
@_cluster_options
@click.option("-o", "--output", "fmt", type=click.Choice(["json", "yaml"]), default="json", show_default=True)
def config_dump(node: str | None, control_plane: bool, admin_addr: str | None, kubeconfig: Path | None,
                context: str | None, namespace: str | None, fmt: str) -> None:
    """The full state a component serves from (GET /config_dump)."""
    if node and control_plane:
        raise click.UsageError("--node and --control-plane exclude each other")
    ts = _targets(node, admin_addr, (kubeconfig, context, namespace), control_plane)
    try:
        dumps = {t.label: insp.fetch(t, "/config_dump") for t in ts}
    except (insp.InspectError, ValueError) as exc:
        _fail(str(exc))
    click.echo(render(next(iter(dumps.values())) if len(dumps) == 1 else dumps, fmt))


# ---- lab -------------------------------------------------------------------------

@cli.group()
def lab() -> None:
    """A local multi-node mesh: nodes and pods as netns + cgroups (root).

    State in $TRELLIS_LAB_DIR (default /run/trellis/lab); kernel names start with
    $TRELLIS_LAB_PREFIX (default trellis)."""


@lab.command("up")
@click.argument("directory", default="examples/lab", type=click.Path(path_type=Path))
@click.option("--no-mesh", is_flag=True, help="network, cgroups and pods only: no control plane, ztunnel or node agent")
@click.option("--timeout", default=60.0, show_default=True, help="seconds to wait for readiness")
@click.option("--kubernetes", is_flag=True, help="shaped like a cluster: an API server (stand-in) serves the lab's "
              "pods, services and policies; kubelet cgroups; the components in Kubernetes mode")
@click.option("--ztunnel-workers", default=None, metavar="N|auto",
              help="worker processes per ztunnel (overrides the lab file's spec.ztunnelWorkers; default: "
                   "ztunnel's own, the cores up to 4)")
def lab_up(directory: Path, no_mesh: bool, timeout: float, kubernetes: bool, ztunnel_workers: str | None) -> None:
    """Create the lab described by DIRECTORY/lab.yaml and DIRECTORY/config/."""
    from .lab import summary, topology, up
    try:
        if ztunnel_workers is not None and ztunnel_workers != "auto" and not (
                ztunnel_workers.isdigit() and 1 <= int(ztunnel_workers) <= 64):
            raise click.BadParameter(f"{ztunnel_workers!r}: give 1 to 64, or auto", param_hint="--ztunnel-workers")
        st, plan = up.up(directory, mesh=not no_mesh, echo=lambda s: click.echo(f"==> {s}"), ready_timeout=timeout,
                          kubernetes=kubernetes, ztunnel_workers=ztunnel_workers)
    except topology.LabConfigError as exc:
        _fail(f"invalid lab:\n{exc}")
    except (up.LabError, OSError, RuntimeError) as exc:
        _fail(str(exc))
    click.echo(summary.after_up(st))


@lab.command("down")
def lab_down() -> None:
    """Stop every lab process and delete its netns, cgroups and state."""
    from .lab import down
    problems = down.down(echo=lambda s: click.echo(f"==> {s}"))
    for p in problems:
        click.echo(f"error: {p}", err=True)
    if problems:
        sys.exit(1)


@lab.command("status")
@OUTPUT
def lab_status(fmt: str) -> None:
    """Components (alive, pid) and pods (address, enrolled)."""
    from .lab import state, status, summary
    st = state.load()
    if st is None:
        _fail(f"no lab running (no {state.state_file()}); start one with `trellis lab up`")
    from .lab.up import mesh_pods
    report = status.probe(st, mesh_pods(state.state_dir() / "config"))
    click.echo(render(report, fmt) if fmt != "table" else summary.status_tables(st, report))
    if report["missing"]:
        sys.exit(1)


@lab.command("stop")
@click.argument("component")
@click.option("--signal", "sig", type=click.Choice(["TERM", "KILL", "INT"]), default="TERM", show_default=True,
              help="KILL to try a crash")
def lab_stop(component: str, sig: str) -> None:
    """Stop COMPONENT (as `lab status` names it) and keep it down: the supervisor does not
    restart it until `trellis lab start COMPONENT`."""
    import signal
    from .lab import control
    try:
        p = control.stop(component, signal.Signals[f"SIG{sig}"])
    except control.ControlError as exc:
        _fail(str(exc))
    click.echo(f"{p.name} (pid {p.pid}) stopped with SIG{sig}; `trellis lab start {p.name}` brings it back")


@lab.command("start")
@click.argument("component")
def lab_start(component: str) -> None:
    """Start COMPONENT again after `trellis lab stop`, and supervise it again."""
    from .lab import control
    try:
        p = control.start(component)
    except (control.ControlError, OSError) as exc:
        _fail(str(exc))
    click.echo(f"{p.name} running as pid {p.pid}")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("pod")
@click.option("-n", "--namespace", help="the pod's namespace when its name is ambiguous")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(pod: str, namespace: str | None, command: tuple[str, ...]) -> None:
    """Run COMMAND inside POD's netns and cgroup; exits with COMMAND's code."""
    from .lab import procs, state
    st = state.load()
    if st is None:
        _fail(f"no lab running (no {state.state_file()}); start one with `trellis lab up`")
    hits = [p for p in st.pods if p["name"] == pod and namespace in (None, p["namespace"])]
    if len(hits) != 1:
        known = ", ".join(f"{p['namespace']}/{p['name']}" for p in st.pods)
        _fail(f"{'no' if not hits else 'more than one'} pod {pod!r}"
              f"{f' in namespace {namespace}' if namespace else ''}; lab pods: {known}")
    p = hits[0]
    try:
        code = procs.run_in(list(command), netns=p["netns"], cgroup=p["cgroup"],
                            env={"POD_NAME": p["name"], "POD_NAMESPACE": p["namespace"], "POD_IP": p["address"]})
    except (OSError, subprocess.SubprocessError) as exc:  # not found, or setns/cgroup join refused
        _fail(f"cannot run {command[0]!r} in pod {p['namespace']}/{p['name']}: {exc}")
    sys.exit(code)


def _config_dir() -> Path:
    from .lab import state
    st = state.load()
    if st is None:
        _fail(f"no lab running (no {state.state_file()}); start one with `trellis lab up`")
    try:
        return state.config_dir_of(st)
    except ValueError as exc:
        _fail(str(exc))


FILENAME = click.option("-f", "--filename", "file", required=True, metavar="FILE|DIR|-",
                        type=click.Path(exists=True, allow_dash=True, path_type=Path),
                        help="a YAML file, a directory of them, or - for stdin (as kubectl's -f)")


def _parse_or_fail(file: Path, verb: str):
    res = _resources()
    from meshcore.resources.loader import yaml_files
    if str(file) == "-":
        result = res.parse_documents(sys.stdin.read(), "<stdin>")
    elif file.is_dir():
        result = res.LoadResult()
        for f in yaml_files(file):
            result.extend(res.load_file(f))
    else:
        result = res.load_file(file)
    for err in result.errors:
        click.echo(str(err), err=True)
    if result.errors:
        sys.exit(1)
    if not result.resources:
        _fail(f"no objects passed to {verb} in {'stdin' if str(file) == '-' else file}")
    return result.resources


def _warn(resources) -> None:
    """kubectl's `Warning:` lines (stderr) for objects that are valid but cannot work as
    written (an AuthorizationPolicy value no request matches); they do not change the exit code."""
    from meshcore.state.policies import warnings
    for r in resources:
        if r.kind == "AuthorizationPolicy":
            for w in warnings(r):
                click.echo(f"Warning: {w}", err=True)


@lab.command("apply")
@FILENAME
def lab_apply(file: Path) -> None:
    """Validate FILE and create or replace its objects in the lab's live config dir."""
    from .lab import liveconfig
    d = _config_dir()
    resources = _parse_or_fail(file, "apply")
    _warn(resources)
    problems = liveconfig.conflicts(d, resources)
    for err in problems:   # what the control plane would refuse: say so now, apply nothing
        click.echo(str(err), err=True)
    if problems:
        sys.exit(1)
    for r, verb in liveconfig.apply(d, resources):
        click.echo(f"{r.kind.lower()}/{r.name} {verb}")


@lab.command("delete")
@FILENAME
def lab_delete(file: Path) -> None:
    """Remove FILE's objects (matched by kind, namespace and name) from the lab's live config."""
    from .lab import liveconfig
    d = _config_dir()
    deleted, missing = liveconfig.delete(d, _parse_or_fail(file, "delete"))
    for r in deleted:
        click.echo(f"{r.kind.lower()}/{r.name} deleted")
    for r in missing:
        click.echo(f"{r.kind.lower()}/{r.name} not found", err=True)
    if missing:
        sys.exit(1)


def _waypoint_commands() -> None:
    from .getcli import get
    from .waypointcli import routes, waypoint
    cli.add_command(waypoint)
    cli.add_command(routes)
    cli.add_command(get)


_waypoint_commands()


def main() -> None:
    cli(prog_name="trellis")


if __name__ == "__main__":
    main()
