"""`trellis crds`, `trellis install` and `trellis uninstall` (registered in trellis/cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from . import chart as chartmod
from . import crdgen

CRD_DIR = chartmod.CHART_DIR / "crds"


@click.command()
@click.option("--write", "write_dir", type=click.Path(file_okay=False, path_type=Path), is_flag=False,
              flag_value=str(CRD_DIR), default=None, help=f"write the CRD files (default dir: {CRD_DIR})")
@click.option("--check", is_flag=True, help="exit 1 if the chart's CRDs differ from the resource model")
def crds(write_dir: Path | None, check: bool) -> None:
    """CRDs for the trellis.dev kinds, generated from meshcore.resources (prints them by default)."""
    generated = crdgen.generate()
    if check:
        stale = drift(CRD_DIR, generated)
        for line in stale:
            click.echo(line, err=True)
        if stale:
            click.echo("run `trellis crds --write` and commit the result", err=True)
            sys.exit(1)
        click.echo(f"CRDs up to date: {len(generated)} kind(s)")
        return
    if write_dir is not None:
        write_dir.mkdir(parents=True, exist_ok=True)
        for old in write_dir.glob("*.trellis.dev.yaml"):
            if old.name not in generated:
                old.unlink()
        for name, text in generated.items():
            (write_dir / name).write_text(text)
            click.echo(f"wrote {write_dir / name}")
        return
    click.echo("".join("---\n" + t for t in generated.values()), nl=False)


def drift(directory: Path, generated: dict[str, str]) -> list[str]:
    """One line per CRD file that is missing, stale or no longer generated."""
    have = {p.name: p.read_text() for p in directory.glob("*.trellis.dev.yaml")}
    out = [f"{directory / n}: missing" for n in generated if n not in have]
    out += [f"{directory / n}: differs from the resource model" for n in generated if n in have and have[n] != generated[n]]
    out += [f"{directory / n}: no such kind in the resource model any more" for n in have if n not in generated]
    return out


def _common(f):
    for opt in reversed([
        click.option("-f", "--values", "values_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="a values file (repeatable; later wins)"),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="a value, Helm syntax (repeatable)"),
        click.option("-n", "--namespace", default=chartmod.NAMESPACE, show_default=True),
        click.option("--release", default=chartmod.RELEASE, show_default=True),
        click.option("--chart", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     default=chartmod.CHART_DIR, show_default=True),
        click.option("--kubeconfig", type=click.Path(dir_okay=False, path_type=Path), help="default: $KUBECONFIG, ~/.kube/config, in-cluster"),
        click.option("--context", help="kubeconfig context (default: current-context)"),
    ]):
        f = opt(f)
    return f


def _render(values_files, sets, namespace, release, chart) -> list[dict]:
    try:
        values = chartmod.user_values(values_files, sets)
        return [chartmod.namespace_object(namespace)] + chartmod.render(values, chart=chart, release=release,
                                                                        namespace=namespace)
    except chartmod.ChartError as exc:
        raise click.ClickException(str(exc)) from exc


def _client(kubeconfig, context):
    from .apply import Client
    from .kubeconfig import KubeconfigError, load
    try:
        return Client(load(kubeconfig, context))
    except KubeconfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _run(client, fn, objs) -> None:
    from .apply import ApplyError
    try:
        for r in fn(client, objs):
            where = f" -n {r.namespace}" if r.namespace else ""
            click.echo(f"{r.kind.lower()}/{r.name}{where} {r.action}")
    except ApplyError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        client.close()


@click.command()
@_common
@click.option("--dry-run", is_flag=True, help="print the manifests instead of applying them")
def install(values_files, sets, namespace, release, chart, kubeconfig, context, dry_run) -> None:
    """Render the Helm chart offline and apply it with server-side apply (field manager `trellis`)."""
    objs = _render(values_files, sets, namespace, release, chart)
    if dry_run:
        click.echo(chartmod.to_yaml(objs), nl=False)
        return
    from .apply import apply_all
    _run(_client(kubeconfig, context), apply_all, objs)


@click.command()
@_common
@click.option("--delete-crds", is_flag=True,
              help="also delete the trellis.dev CRDs, and with them every policy and WorkloadEntry in the cluster")
def uninstall(values_files, sets, namespace, release, chart, kubeconfig, context, delete_crds) -> None:
    """Delete what `trellis install` applied (the namespace too). CRDs stay unless --delete-crds, as with Helm."""
    objs = _render(values_files, sets, namespace, release, chart)
    if not delete_crds:
        objs = [o for o in objs if o["kind"] != "CustomResourceDefinition"]
    from .apply import delete_all
    _run(_client(kubeconfig, context), delete_all, objs)
