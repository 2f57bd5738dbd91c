"""The `medgate` command: serve, worker, db, keys (and, from later issues, kb, models, analyze,
ingest, dicom-scp)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app import logs
from app.config import get_settings

app = typer.Typer(help="MedGate: medical-imaging AI platform service.", no_args_is_help=True,
                  add_completion=False)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
kb_app = typer.Typer(help="Knowledge base: check and build the retrieval indexes.",
                     no_args_is_help=True)
app.add_typer(kb_app, name="kb")
models_app = typer.Typer(help="Model versions: register, validate, shadow, activate, roll "
                         "back, retire, list, show; inspect a family's module tree.",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
store_app = typer.Typer(help="The DICOM file store.", no_args_is_help=True)
app.add_typer(store_app, name="store")
peers_app = typer.Typer(help="Known DICOM peers: who may associate with the SCP, from where, "
                        "and whether they may store, query and retrieve.", no_args_is_help=True)
app.add_typer(peers_app, name="peers")
destinations_app = typer.Typer(help="Where report versions are sent: DICOM AEs (C-STORE) and "
                               "STOW-RS URLs, for some domains and states.",
                               no_args_is_help=True)
app.add_typer(destinations_app, name="destinations")
reports_app = typer.Typer(help="Report text tools: label report text with findings.",
                          no_args_is_help=True)
app.add_typer(reports_app, name="reports")
console = Console(stderr=True)


@app.command()
def serve(host: Annotated[str, typer.Option()] = "",
          port: Annotated[int, typer.Option()] = 0,
          migrate: Annotated[bool, typer.Option(help="apply migrations first")] = True) -> None:
    """Run the API (and, by default, the DICOM SCP and the embedded worker)."""
    import uvicorn

    from app.db import migrate as migrations
    from app.main import create_app

    s = get_settings()
    s.ensure_dirs()
    if migrate:
        migrations.upgrade()
    if host and not os.environ.get("MEDGATE_DICOM_HOST"):
        s.dicom_host = host  # the SCP listens where HTTP does unless told otherwise
    host = host or s.http_host
    port = port or s.http_port
    console.print(f"MedGate on http://{host}:{port}  (data: {s.data_dir.resolve()}, "
                  f"broker: {'embedded filesystem' if s.embedded_broker else s.broker_url})")
    console.print("Create an API key with: [bold].venv/bin/medgate keys create --role admin "
                  "--name me[/bold]")
    logging.basicConfig(level=logging.INFO)
    logs.install()
    if s.http_workers == 1:
        uvicorn.run(create_app(start_services=True), host=host, port=port, log_level="info")
        return
    from app.services import http_processes

    # One listening socket for every HTTP process: each accepts connections from it.
    sock = socket.create_server((host, port), backlog=2048)
    sock.set_inheritable(True)
    extra = http_processes(s, sock.fileno())
    for proc in extra:
        proc.start()
    try:
        server = uvicorn.Server(uvicorn.Config(create_app(start_services=True),
                                               log_level="info"))
        server.run(sockets=[sock])
    finally:
        for proc in extra:
            proc.stop()
        sock.close()


@app.command("serve-http", hidden=True)
def serve_http(fd: Annotated[int, typer.Option(help="the server's listening socket")]) -> None:
    """One extra HTTP process of `medgate serve` (MEDGATE_HTTP_WORKERS): the API on the
    server's listening socket; the DICOM SCP, the grouping loop and the worker stay with the
    first process."""
    import uvicorn

    from app import services
    from app.main import create_app

    s = get_settings()
    if s.embedded_worker and s.embedded_broker:
        services.SHARED_HEARTBEAT = services.worker_heartbeat(s)
    logging.basicConfig(level=logging.INFO)
    logs.install()
    services.knowledge_warm_up(s)  # its first search would otherwise pay for the index
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="info"))
    server.run(sockets=[socket.socket(fileno=fd)])


@app.command()
def worker(queues: Annotated[str, typer.Option("-Q", "--queues")] =
           "ingest,cxr,ct,ecg,pathology,export",
           concurrency: Annotated[int, typer.Option("-c", "--concurrency")] = 1,
           pool: Annotated[str, typer.Option("-P", "--pool")] = "prefork",
           loglevel: Annotated[str, typer.Option("-l", "--loglevel")] = "INFO") -> None:
    """Run a Celery worker on the given queues."""
    from app.pipeline.celery_app import celery_app

    get_settings().ensure_dirs()
    logs.install()
    celery_app.worker_main(["worker", "-Q", queues, "-c", str(concurrency), "-P", pool,
                            "-l", loglevel, "--without-gossip", "--without-mingle",
                            "--without-heartbeat"])


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default head)."""
    from app.db import migrate

    migrate.upgrade(revision)
    console.print(f"database at {migrate.current()}")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (use 'base' for an empty database)."""
    from app.db import migrate

    migrate.downgrade(revision)
    console.print(f"database at {migrate.current()}")


@db_app.command("current")
def db_current() -> None:
    """Print the current migration revision."""
    from app.db import migrate

    typer.echo(migrate.current() or "base")


@keys_app.command("create")
def keys_create(role: Annotated[str, typer.Option(help="pacs, clinician or admin")],
                name: Annotated[str, typer.Option()],
                person: Annotated[str, typer.Option(
                    help="the person the key belongs to, as signatures name them "
                         "(required for clinician keys)")] = "",
                person_id: Annotated[str, typer.Option(
                    help="that person's identifier at the site (staff, GMC or NPI "
                         "number)")] = "") -> None:
    """Create a key. The key is printed once, on its own line; only its hash is kept."""
    from app.db.session import session_scope
    from app.security.keys import ApiKeyError, create_key

    try:
        with session_scope() as session:
            row, key = create_key(session, role, name, person_name=person, person_id=person_id)
            key_id = row.id
    except ApiKeyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    owner = f", {person.strip()}" if person.strip() else ""
    console.print(f"created key {key_id} ({role}, {name}{owner}); it is shown only now:")
    typer.echo(key)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    from app.db.session import session_scope
    from app.security.keys import list_keys

    table = Table("id", "name", "role", "person", "prefix", "created", "revoked")
    with session_scope() as session:
        for k in list_keys(session):
            person = f"{k.person_name} ({k.person_id})" if k.person_id else k.person_name
            table.add_row(str(k.id), k.name, k.role, person, k.prefix,
                          f"{k.created_at:%Y-%m-%d %H:%M}",
                          f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    out = Console()
    # piped (grep, scripts): one line per key, never wrapped to an assumed 80 columns
    (out if out.is_terminal else Console(width=200)).print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from app.db.session import session_scope
    from app.security.keys import ApiKeyError, revoke_key

    try:
        with session_scope() as session:
            revoke_key(session, key_id)
    except ApiKeyError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"revoked key {key_id}")


def _peer_call(fn, *args, **kwargs):  # noqa: ANN001, ANN202 - the peers commands share it
    from app.db.session import session_scope
    from app.dicom.peers import PeerError, to_dict

    try:
        with session_scope() as session:
            out = fn(session, *args, **kwargs)
            return to_dict(out) if not isinstance(out, dict) else out
    except PeerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _rights(p: dict) -> str:
    return ",".join(r for r in ("store", "query", "retrieve") if p[f"can_{r}"]) or "-"


@peers_app.command("list")
def peers_list() -> None:
    """List the known peers and their rights."""
    from app.db.session import session_scope
    from app.dicom.peers import list_peers, to_dict

    table = Table("AE title", "host", "port", "rights", "description")
    with session_scope() as session:
        for p in map(to_dict, list_peers(session)):
            table.add_row(p["ae_title"], p["host"] or "(any)", str(p["port"] or ""),
                          _rights(p), p["description"])
    out = Console()
    (out if out.is_terminal else Console(width=200)).print(table)


@peers_app.command("add")
def peers_add(ae_title: Annotated[str, typer.Argument(help="the peer's calling AE title")],
              host: Annotated[str, typer.Option(help="address, network (CIDR) or name it "
                                                "connects from; empty: any")] = "",
              port: Annotated[int | None, typer.Option(help="its own SCP port")] = None,
              store: Annotated[bool, typer.Option("--store", help="may C-STORE")] = False,
              query: Annotated[bool, typer.Option("--query", help="may C-FIND")] = False,
              retrieve: Annotated[bool, typer.Option("--retrieve", help="may retrieve")
                                  ] = False,
              description: Annotated[str, typer.Option()] = "") -> None:
    """Register a peer; its next association is accepted."""
    from app.dicom.peers import create

    p = _peer_call(create, ae_title, "cli", host=host, port=port, can_store=store,
                   can_query=query, can_retrieve=retrieve, description=description)
    console.print(f"added peer {p['ae_title']} (host {p['host'] or 'any'}, rights {_rights(p)})")


@peers_app.command("update")
def peers_update(ae_title: Annotated[str, typer.Argument()],
                 host: Annotated[str | None, typer.Option()] = None,
                 port: Annotated[int | None, typer.Option()] = None,
                 store: Annotated[bool | None, typer.Option("--store/--no-store")] = None,
                 query: Annotated[bool | None, typer.Option("--query/--no-query")] = None,
                 retrieve: Annotated[bool | None, typer.Option("--retrieve/--no-retrieve")
                                     ] = None,
                 description: Annotated[str | None, typer.Option()] = None) -> None:
    """Change a peer's host, port, rights or description (only the options given)."""
    from app.dicom.peers import update

    changes = {k: v for k, v in {"host": host, "port": port, "can_store": store,
                                 "can_query": query, "can_retrieve": retrieve,
                                 "description": description}.items() if v is not None}
    p = _peer_call(update, ae_title, "cli", **changes)
    console.print(f"updated peer {p['ae_title']} (host {p['host'] or 'any'}, "
                  f"rights {_rights(p)})")


@peers_app.command("remove")
def peers_remove(ae_title: Annotated[str, typer.Argument()]) -> None:
    """Forget a peer; its next association is rejected."""
    from app.dicom.peers import delete

    p = _peer_call(delete, ae_title, "cli")
    console.print(f"removed peer {p['ae_title']}")


def _destination_call(fn, *args, **kwargs):  # noqa: ANN001, ANN202 - shared by the commands
    from app.db.session import session_scope
    from app.export.destinations import DestinationError, to_dict

    try:
        with session_scope() as session:
            out = fn(session, *args, **kwargs)
            return to_dict(out) if not isinstance(out, dict) else out
    except DestinationError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@destinations_app.command("list")
def destinations_list() -> None:
    """List the destinations, what they take and how they are reached."""
    from app.db.session import session_scope
    from app.export.destinations import list_all, to_dict

    table = Table("name", "kind", "where", "domains", "states")
    with session_scope() as session:
        for d in map(to_dict, list_all(session)):
            where = (f"{d['ae_title']}@{d['host']}:{d['port']}" if d["kind"] == "dimse"
                     else d["url"])
            table.add_row(d["name"], d["kind"], where, ",".join(d["domains"]) or "all",
                          ",".join(d["states"]) or "all")
    out = Console()
    (out if out.is_terminal else Console(width=200)).print(table)


@destinations_app.command("add")
def destinations_add(
        name: Annotated[str, typer.Argument()],
        ae: Annotated[str | None, typer.Option(help="DICOM: AE title@host:port")] = None,
        stow: Annotated[str | None, typer.Option(help="STOW-RS: the DICOMweb base URL")] = None,
        calling_ae: Annotated[str | None, typer.Option(help="DICOM: our calling AE title")
                              ] = None,
        domain: Annotated[list[str] | None, typer.Option(help="cxr, ct, ecg, pathology; "
                                                         "repeat; none: all")] = None,
        state: Annotated[list[str] | None, typer.Option(help="draft, edited, final, amended, "
                                                        "corrected; repeat; none: all")
                         ] = None) -> None:
    """Add a destination: --ae ORTHANC@pacs.example:104 or --stow https://pacs/dicom-web."""
    from app.export.destinations import create

    if (ae is None) == (stow is None):
        console.print("[red]error:[/red] give one of --ae AE@host:port or --stow URL")
        raise typer.Exit(2)
    values: dict = {"domains": domain or [], "states": state or []}
    if ae is not None:
        title, _, address = ae.partition("@")
        host, _, port = address.rpartition(":")
        if not (title and host and port.isdigit()):
            console.print("[red]error:[/red] --ae is AE@host:port, e.g. ORTHANC@10.1.2.3:104")
            raise typer.Exit(2)
        values |= {"kind": "dimse", "ae_title": title, "host": host, "port": int(port),
                   "calling_ae": calling_ae or ""}
    else:
        values |= {"kind": "stow-rs", "url": stow}
    d = _destination_call(create, "cli", name=name, **values)
    console.print(f"added destination {d['name']} ({d['kind']})")


@destinations_app.command("remove")
def destinations_remove(name: Annotated[str, typer.Argument()]) -> None:
    """Remove a destination (its deliveries stay in the reports' history)."""
    from app.export.destinations import delete

    d = _destination_call(delete, name, "cli")
    console.print(f"removed destination {d['name']}")


@app.command()
def analyze(paths: Annotated[list[str], typer.Argument(help="DICOM files, folders or .hea")],
            as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Route and analyse local files in-process (no server): engine results and the draft."""
    import json
    from pathlib import Path

    from rich.progress import Progress

    from app.pipeline.analyze import analyze_paths
    from app.rag.corpus import knowledge_lookup

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("analysing", total=None)

        def step(study: str) -> None:
            progress.update(task, description=f"analysing {study[:60]}", advance=1)

        results = analyze_paths([Path(p) for p in paths], knowledge=knowledge_lookup(),
                                progress=step)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2, default=str))
        return
    from app.reports.composer import Draft

    for r in results:
        Console().rule(f"{r.status}: {r.study_uid or ', '.join(r.paths)[:80]}")
        if r.reason:
            typer.echo(f"reason: {r.reason}")
        if r.domain:
            typer.echo(f"domain: {r.domain}  rule: {r.rule}  pipeline: {' > '.join(r.pipeline)}")
        for res in r.results:
            model = res["model"]
            flag = "" if res["trained"] else "  (untrained: kept out of the draft)"
            typer.echo(f"- {model['family']}@{model['version']}: "
                       f"{len(res['findings'])} findings, {len(res['measurements'])} "
                       f"measurements{flag}")
            for w in res["warnings"]:
                typer.echo(f"    warning: {w}")
        for w in r.warnings:
            typer.echo(f"warning: {w}")
        if r.draft:
            draft = Draft.from_dict(r.draft)
            typer.echo("")
            typer.echo(draft.text())
            for u in draft.unverified:
                typer.echo(f"model text, not verified ({u['model']}): {u['text']}  "
                           f"[{'; '.join(u['reasons'])}]")


@app.command()
def ingest(paths: Annotated[list[str], typer.Argument(help="DICOM files or folders")],
           url: Annotated[str, typer.Option(help="MedGate base URL")] = "http://127.0.0.1:8000",
           key: Annotated[str | None, typer.Option(envvar="MEDGATE_API_KEY",
                                                   help="API key (role pacs)")] = None,
           batch: Annotated[int, typer.Option(help="instances per STOW-RS request")] = 50
           ) -> None:
    """Send DICOM files to a server over DICOMweb STOW-RS; exit 1 if any was refused."""
    from pathlib import Path

    from app.ingest_client import main as ingest_main

    raise typer.Exit(ingest_main([Path(p) for p in paths], url, key, batch))


@app.command("dicom-scp")
def dicom_scp(port: Annotated[int, typer.Option(help="DICOM port (default: settings)")] = 0,
              host: Annotated[str, typer.Option(help="listen address (default: settings)")] = "",
              migrate: Annotated[bool, typer.Option(help="apply migrations first")] = True
              ) -> None:
    """Run only the DICOM SCP (C-ECHO, C-STORE, C-FIND) in the foreground until Ctrl-C."""
    from app.db import migrate as migrations
    from app.dicom.scp import serve_forever

    s = get_settings()
    s.ensure_dirs()
    if migrate:
        migrations.upgrade()
    s = s.model_copy(update={"dicom_port": port or s.dicom_port,
                             "dicom_host": host or s.dicom_host})
    logging.basicConfig(level=logging.INFO)
    logs.install()
    console.print(f"DICOM SCP {s.ae_title} on {s.dicom_host}:{s.dicom_port} "
                  f"(data: {s.data_dir.resolve()}); Ctrl-C stops it")
    serve_forever(s)


@kb_app.command("check")
def kb_check(root: Annotated[str, typer.Option(help="corpus folder")] = "") -> None:
    """Check every entry: fields, ids, domains, sections. Exit 1 when anything is wrong."""
    from pathlib import Path

    from app.rag.corpus import check, default_corpus_root, entry_files

    folder = Path(root) if root else default_corpus_root()
    problems = check(folder)
    for p in problems:
        typer.echo(p)
    if problems:
        console.print(f"[red]{len(problems)} problem(s)[/red] in {folder}")
        raise typer.Exit(1)
    console.print(f"{len(entry_files(folder))} entries in {folder}: no problems")


@kb_app.command("build")
def kb_build(root: Annotated[str, typer.Option(help="corpus folder")] = "",
             force: Annotated[bool, typer.Option(
                 help="rebuild even if current, embedding every chunk again")] = False,
             save_vectors: Annotated[bool, typer.Option(
                 help="then write the index's chunk vectors into <corpus>/.embeddings, "
                      "which builds on other machines reuse")] = False
             ) -> None:
    """Build one index per domain (only when the corpus or embedder changed), embedding only
    the chunks that neither the previous index nor the corpus's shipped vectors hold."""
    from pathlib import Path

    from rich.progress import Progress

    from app.rag.corpus import CorpusError
    from app.rag.index import build
    from app.rag.index import save_vectors as write_vectors

    with Progress(console=console) as progress:
        tasks: dict[str, object] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        try:
            result = build(Path(root) if root else None, progress=report, force=force)
        except CorpusError as exc:
            for p in exc.problems:
                typer.echo(p)
            raise typer.Exit(1) from exc
    state = (f"rebuilt ({result.embedded} chunks embedded, {result.reused} reused)"
             if result.rebuilt else "already current")
    console.print(f"{state}: {result.counts} with {result.embedder} in {result.out_dir} "
                  f"({result.seconds:.1f} s)")
    if save_vectors:
        folder = write_vectors(result.out_dir, Path(root) if root else None)
        console.print(f"chunk vectors written to {folder}")


@models_app.command("list")
def models_list() -> None:
    """Registered model versions: status, the rules they run on (active or shadow), weights."""
    from app.db.session import session_scope
    from app.registry import views

    table = Table("family", "version", "variant", "status", "runs on", "weights", "files",
                  "sha256")
    with session_scope() as session:
        for row in views.summaries(session):
            roles = ", ".join(f"{r['role']}:{r['rule'] or '*'}" for r in row["roles"])
            table.add_row(row["family"], row["version"], row["variant"], row["status"], roles,
                          row["weights_path"] or "", str(row["files"]),
                          (row["sha256"] or "")[:16])
    Console().print(table)


def _registry_call(do) -> None:  # noqa: ANN001
    """Run a registry change in one transaction; a refusal prints its reason (exit 2). A
    quarantine found on the way is kept, as the API keeps it."""
    from app.db.session import session_factory
    from app.registry.versions import RegistryError

    with session_factory()() as session:
        try:
            message = do(session)
        except RegistryError as exc:
            if exc.code == "quarantined":
                session.commit()
            else:
                session.rollback()
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        session.commit()
    console.print(message)


Reason = Annotated[str, typer.Option(help="why (kept in the audit log)")]
Rule = Annotated[str, typer.Option(help="one routing rule only (default: every rule)")]


@models_app.command("register")
def models_register(family: str, version: str,
                    weights: Annotated[str, typer.Option(
                        help="a weights file or a hub-layout folder, relative to "
                             "MEDGATE_MODEL_DIR")] = "",
                    variant: Annotated[str, typer.Option()] = "checkpoint",
                    config: Annotated[str, typer.Option(help="JSON configuration")] = "{}",
                    notes: Annotated[str, typer.Option(help="model-card notes")] = ""
                    ) -> None:
    """Register a version. The manifest of its weights (size and sha256 of every file) is
    recorded and verified before any worker loads them."""
    import json

    from app.registry.versions import register

    try:
        cfg = json.loads(config)
    except json.JSONDecodeError as exc:
        console.print(f"[red]error:[/red] --config is not JSON: {exc}")
        raise typer.Exit(2) from exc

    def do(session) -> str:  # noqa: ANN001
        row = register(session, family, version, variant, weights or None, cfg, actor="cli",
                       notes=notes)
        files = len((row.manifest or {}).get("files") or [])
        return f"registered {family} {version} ({files} weights file(s), sha256 {row.sha256})"

    _registry_call(do)


@models_app.command("validate")
def models_validate(family: str, version: str,
                    wait: Annotated[float, typer.Option(
                        help="seconds to wait for a worker's outcome (0: just queue it)")]
                    = 600.0) -> None:
    """Queue a validation on the family's bundled study and wait for a worker's outcome.
    Exit 1 when it fails, 3 when no worker answered in time."""
    import time

    from app.db.models import ModelValidation
    from app.db.session import session_factory
    from app.registry import lifecycle

    ids: list[int] = []

    def do(session) -> str:  # noqa: ANN001
        v = lifecycle.request_validation(session, family, version, "cli")
        session.flush()
        ids.append(v.id)
        return f"validation {v.id} of {family} {version} queued (job {v.job_fk}, case {v.case})"

    _registry_call(do)
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline:
        with session_factory()() as session:
            v = session.get(ModelValidation, ids[0])
            if v.state != "queued":
                console.print(f"{v.state}: load {v.load_seconds} s, run {v.run_seconds} s, "
                              f"peak memory {v.peak_memory_bytes} bytes"
                              + (f"; {v.error}" if v.error else ""))
                raise typer.Exit(0 if v.state == "passed" else 1)
        time.sleep(1.0)
    if wait:
        console.print("no worker answered in time; the validation stays queued")
        raise typer.Exit(3)


@models_app.command("shadow")
def models_shadow(family: str, version: str, reason: Reason = "", rule: Rule = "",
                  stop: Annotated[bool, typer.Option(help="stop shadowing")] = False) -> None:
    """Run VERSION beside the active one on live studies (never drafts), or --stop."""
    from app.registry import lifecycle

    def do(session) -> str:  # noqa: ANN001
        if stop:
            lifecycle.stop_shadow(session, family, version, "cli", reason)
            return f"{family} {version} no longer shadows"
        lifecycle.shadow(session, family, version, "cli", reason, rule)
        return f"{family} {version} shadows {family}" + (f" on rule {rule}" if rule else "")

    _registry_call(do)


@models_app.command("activate")
def models_activate(family: str, version: str, reason: Reason = "", rule: Rule = "") -> None:
    """Make VERSION the one the pipeline runs for FAMILY (on every rule, or --rule)."""
    from app.registry import lifecycle

    def do(session) -> str:  # noqa: ANN001
        lifecycle.activate(session, family, version, "cli", reason, rule)
        return f"{family} {version} is active" + (f" on rule {rule}" if rule else "")

    _registry_call(do)


@models_app.command("rollback")
def models_rollback(family: str, reason: Reason = "", rule: Rule = "") -> None:
    """Back to the version that was active before the current one."""
    from app.registry import lifecycle
    from app.registry.versions import resolve

    def do(session) -> str:  # noqa: ANN001
        lifecycle.rollback(session, family, "cli", reason, rule)
        session.flush()
        return f"{family} runs {resolve(session, family, rule=rule).spec.version}" + (
            f" on rule {rule}" if rule else "")

    _registry_call(do)


@models_app.command("retire")
def models_retire(family: str, version: str, reason: Reason = "") -> None:
    """Withdraw VERSION for good (an active version is refused)."""
    from app.registry import lifecycle

    def do(session) -> str:  # noqa: ANN001
        lifecycle.retire(session, family, version, "cli", reason)
        return f"{family} {version} is retired"

    _registry_call(do)


@models_app.command("show")
def models_show(family: str, version: str) -> None:
    """The detail view as JSON: history, manifest, validations and figures."""
    import json

    from app.db.session import session_scope
    from app.registry import views
    from app.registry.versions import RegistryError, get_version

    with session_scope() as session:
        try:
            typer.echo(json.dumps(views.version_detail(session, get_version(session, family,
                                                                             version)),
                                  indent=2))
        except RegistryError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc


@models_app.command("inspect")
def models_inspect(family: str,
                   variant: Annotated[str, typer.Option(help="checkpoint or reference")]
                   = "checkpoint",
                   config: Annotated[str | None, typer.Option(
                       help="a named size where the family publishes several")] = None,
                   as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False
                   ) -> None:
    """Build FAMILY's module tree on PyTorch's meta device (no memory for weights) and print
    every state-dict key with its shape: what a checkpoint must hold to load strictly."""
    import json

    from app.pipeline.families import load_plugins
    from models.base import ContractError
    from models.runtime.tree import describe_tree

    load_plugins()
    try:
        tree = describe_tree(family, variant, config)
    except ContractError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        typer.echo(json.dumps(tree))
        return
    table = Table("key", "shape")
    for key, shape in tree["keys"].items():
        table.add_row(key, " x ".join(str(n) for n in shape) or "scalar")
    Console().print(table)
    typer.echo(f"{tree['family']} {tree['variant']} {tree['config']}: {len(tree['keys'])} keys, "
               f"{tree['parameters']:,} parameters")


@store_app.command("check")
def store_check(repair: Annotated[bool, typer.Option(
                    help="remove dead writers' temporary files, index or quarantine files "
                         "without a row")] = False,
                min_age: Annotated[float, typer.Option(
                    help="leave files younger than this (seconds): another process may be "
                         "committing them")] = 30.0,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Compare the store with the database. Exit 1 when something needs attention: files
    without a row or stale temporary files (without --repair), rows without a file."""
    import json

    from app.db.session import session_factory
    from app.dicom.reconcile import reconcile

    get_settings().ensure_dirs()
    out = reconcile(session_factory(), repair=repair, min_age=min_age)
    if as_json:
        typer.echo(json.dumps(out.to_dict()))
    else:
        for rel in out.orphans:
            typer.echo(f"no row: {rel}")
        for rel in out.missing:
            typer.echo(f"no file: {rel}")
        for rel, reason in out.quarantined:
            typer.echo(f"quarantined: {rel} ({reason})")
        for rel in out.indexed:
            typer.echo(f"indexed: {rel}")
        console.print(f"{len(out.removed_tmp)} temporary files removed, {len(out.stale_tmp)} "
                      f"stale; {len(out.indexed)} indexed, {len(out.quarantined)} quarantined, "
                      f"{len(out.orphans)} without a row, {len(out.missing)} rows without a file")
    raise typer.Exit(0 if out.clean else 1)


@reports_app.command("label")
def reports_label(path: Annotated[str, typer.Argument(help="JSON Lines file of {\"id\", "
                                                      "\"text\"}; - for standard input")],
                  domain: Annotated[str, typer.Option(help="report domain (cxr)")] = "cxr"
                  ) -> None:
    """Label each line's text; print one JSON line per input line, in order:
    {"id", "findings": [{"code", "state", "span"}]}. A line that is not a JSON object with a
    string "text" prints {"id", "line", "error"} instead, with a message on stderr, and the
    command exits 1 after the last line. Blank lines are skipped. Streams line by line."""
    import json
    import sys

    from models.cxr.labeller import label

    if domain != "cxr":
        console.print(f"[red]error:[/red] no labeller for domain {domain!r} (only cxr)")
        raise typer.Exit(2)
    try:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    failed = 0
    out = sys.stdout
    with stream:
        for n, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                item, error = None, f"not JSON ({exc.msg})"
            else:
                error = None if isinstance(item, dict) and isinstance(item.get("text"), str) \
                    else 'expected a JSON object with a string "text"'
            rid = item.get("id") if isinstance(item, dict) else None
            if error:
                failed += 1
                console.print(f"line {n}: {error}")
                out.write(json.dumps({"id": rid, "line": n, "error": error}) + "\n")
                continue
            findings = [lab.to_dict() for lab in label(item["text"])]
            out.write(json.dumps({"id": rid, "findings": findings}) + "\n")
    out.flush()
    if failed:
        console.print(f"{failed} line(s) could not be labelled")
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
