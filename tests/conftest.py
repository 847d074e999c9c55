"""Shared fixtures: generated datasets in the real on-disk formats, and a briefly trained teacher."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

# Tests never talk to W&B's servers and keep their output short.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CIFAR-100 written in torchvision's pickle layout (10 train / 2 test images per class)."""
    from datamodules.synthetic import write_cifar100

    root = tmp_path_factory.mktemp("cifar")
    write_cifar100(root, train_per_class=10, test_per_class=2, seed=0)
    return root


def _fit_args(cifar_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """CLI arguments for a two-step CPU run on the generated CIFAR fixture."""
    return [
        "fit",
        "--data",
        "CIFAR100",
        f"--data.root={cifar_root}",
        "--data.batch_size=16",
        "--data.eval_batch_size=100",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--run.wandb=disabled",
        f"--run.dir={run_dir}",
        *extra,
    ]


@pytest.fixture(scope="session")
def fit_args():  # type: ignore[no-untyped-def]
    """``fit_args(cifar_root, run_dir, *extra)``: CLI arguments of a two-step CPU run."""
    return _fit_args


def _fit_shipped_config(method_config: str, cifar_root: Path, run_dir: Path, *networks: str) -> Any:
    """A two-step CLI fit in the documented order: the CRD recipe, then ``configs/methods/<method_config>.yaml``,
    then the command line (``networks``: student and teacher arguments).  Returns the CLI (model, trainer, data)."""
    from benchmarks.cli import KDBenchCLI
    from benchmarks.tables import REPO_ROOT

    run = _fit_args(cifar_root, run_dir, *networks)
    configs = ["--config", str(REPO_ROOT / "configs/recipes/crd_cifar100.yaml")]
    configs += ["--config", str(REPO_ROOT / f"configs/methods/{method_config}.yaml")]
    return KDBenchCLI(args=[run[0], *configs, *run[1:]])


@pytest.fixture(scope="session")
def fit_shipped_config():  # type: ignore[no-untyped-def]
    """``fit_shipped_config(method_config, cifar_root, run_dir, *networks)``: a two-step fit with a shipped config."""
    return _fit_shipped_config


@pytest.fixture(scope="session")
def trained_teacher(cifar_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``final.pth`` of a resnet8 trained for two steps with the real CLI path."""
    from benchmarks.cli import KDBenchCLI

    run_dir = tmp_path_factory.mktemp("teacher")
    KDBenchCLI(args=_fit_args(cifar_root, run_dir, "--model=Vanilla", "--model.student=resnet8"))
    return run_dir / "final.pth"


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``teacher_checkpoint(arch)``: a freshly initialised ``arch`` exported as a kdbench network.

    For tests that need a teacher of another shape than ``trained_teacher`` (e.g. resnet32x4's 64..256 channels
    against a resnet8 student); its accuracy is irrelevant there, so it is not trained.
    """
    from models import create_model
    from models.checkpoints import export_network

    root = tmp_path_factory.mktemp("teachers")
    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            torch.manual_seed(0)
            made[arch] = export_network(create_model(arch, 100), arch, root / f"{arch}.pth")
        return made[arch]

    return make


def _check_method_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--model.help <name>`` lists every argument of the method's ``__init__`` with a type (arguments passed on
    through ``**kwargs`` are the parent class's), and the docstring of the class that declares an argument documents
    it (Google-style ``Args:``); a settings group's fields are listed and documented one by one."""
    import dataclasses
    import inspect
    import typing

    from benchmarks.cli import KDBenchCLI
    from kd_modules import method_class
    from kd_modules.base import SettingsGroup

    common = {"self", "student", "teacher", "num_classes", "optim"}
    with pytest.raises(SystemExit) as exit_info:
        KDBenchCLI(args=["fit", "--model.help", name])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    declared: dict[str, tuple[type, Any]] = {}  # argument -> (declaring class, annotation)
    for klass in method_class(name).__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        hints = typing.get_type_hints(klass.__init__)
        for parameter, spec in parameters.items():
            if spec.kind not in (spec.VAR_KEYWORD, spec.VAR_POSITIONAL):
                declared.setdefault(parameter, (klass, hints.get(parameter)))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            break
    for parameter, (klass, group) in declared.items():
        if parameter in common:
            continue
        docstring = inspect.getdoc(klass) or ""
        assert f"    {parameter}: " in docstring, f"{name}: argument {parameter} is not documented ({klass.__name__})"
        if isinstance(group, type) and issubclass(group, SettingsGroup):
            # A settings group: every field on the command line, documented in the group's docstring.
            for field in dataclasses.fields(group):
                assert f"--model.{parameter}.{field.name} " in text, f"{name}: --model.{parameter}.{field.name} missing"
                assert f"    {field.name}: " in (inspect.getdoc(group) or ""), (
                    f"{group.__name__}.{field.name} undocumented"
                )
            continue
        assert f"--model.{parameter} " in text, f"{name}: --model.{parameter} missing from the help"
    assert text.count("(type: ") >= len(declared) - 2


@pytest.fixture(scope="session")
def check_method_help():  # type: ignore[no-untyped-def]
    """``check_method_help(name, capsys)``: the method's CLI help and docstring cover every argument."""
    return _check_method_help


class LocalFileServer:
    """An HTTP server on 127.0.0.1 serving ``files`` (URL path -> bytes), with HTTP Range support.

    ``cut[path] = n`` makes the next request for ``path`` announce the full length but close the connection after
    ``n`` bytes (an interrupted download); ``ignore_range`` answers every request with the whole file (200), as
    servers without range support do.  ``requests`` records ``(path, Range header)`` of every request.
    """

    def __init__(self) -> None:
        import http.server
        import threading

        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                wanted = self.headers.get("Range")
                if wanted and not server.ignore_range:
                    start = int(wanted.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                limit = server.cut.pop(self.path, None)
                self.wfile.write(body if limit is None else body[:limit])
                if limit is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():  # type: ignore[no-untyped-def]
    """A :class:`LocalFileServer` on 127.0.0.1 for the duration of one test."""
    server = LocalFileServer()
    yield server
    server.close()


def _parse_error(capsys: pytest.CaptureFixture[str], method: str, *args: str) -> str:
    """The CLI's one-line message for bad method arguments (jsonargparse checks every ``Literal`` choice): exit 2,
    nothing built; the message with its whitespace collapsed."""
    from benchmarks.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", f"--model={method}", "--model.student=resnet20", "--model.teacher.arch=resnet56", *args])
    assert exit_info.value.code == 2
    return " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="session")
def parse_error():  # type: ignore[no-untyped-def]
    """``parse_error(capsys, method, *args)``: the parser's error for ``--model=method *args``."""
    return _parse_error
