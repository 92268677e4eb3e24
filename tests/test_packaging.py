"""The package as users get it: the wheel holds the package data and the LICENSE, its
metadata the ranges and extras; installed in a fresh virtual environment (without the
source tree, without the serve and curves extras) its console script answers --help and
searches a real index. And the Dockerfile: base image, unprivileged user, port,
health check, entry point, and files to copy that exist and are in the build context.

No network: the wheel is built without build isolation, and the fresh environment
borrows the third-party packages of the running one through a ``.pth`` line (not its
editable install of this project: a ``.pth`` file's own ``.pth`` files are not read).
"""

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "traffic_retrieval"
AUDI = "This is a white Audi."
# the import names of the optional extras' packages: the fresh environment cannot import them
EXTRAS_MODULES = ("fastapi", "uvicorn", "pydantic", "prometheus_client", "python_multipart", "multipart", "matplotlib", "pyarrow")

pytestmark = pytest.mark.packaging


def run(command: list, cwd: Path, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def package_data() -> set[str]:
    """The data files the wheel must hold, as paths inside it."""
    patterns = ("model/model_configs/*.json", "configs/*.yaml", "serve/static/*")
    found = {path for pattern in patterns for path in PACKAGE.glob(pattern) if path.is_file() and not path.name.startswith(".")}
    return {path.relative_to(REPO).as_posix() for path in found}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (no build/ or egg-info left in the working tree)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    result = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", root / "dist", source], cwd=root)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (built,) = (root / "dist").glob("traffic_retrieval-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment with only the wheel installed; third-party packages borrowed, the extras' hidden."""
    root = tmp_path_factory.mktemp("venv") / "env"
    result = run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    assert result.returncode == 0, result.stderr
    python = root / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip())
    assert site.is_dir() and root in site.parents
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, open_clip, faiss, ...
    (site / "without_extras.pth").write_text(f"import sys; sys.modules.update(dict.fromkeys({EXTRAS_MODULES!r}))\n")  # imports of them fail
    result = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=root.parent)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return root


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return env | {"PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1"}


def test_wheel_holds_the_package_data_and_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(metadata_name).decode()
    expected = package_data()
    assert {"traffic_retrieval/model/model_configs", "traffic_retrieval/configs", "traffic_retrieval/serve/static"} <= {
        str(Path(p).parent) for p in expected}
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), sorted(names)[-10:]
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "benchmarks/"))]
    assert "License-Expression: MIT" in metadata
    for extra in ("serve", "curves", "dev"):
        assert f"Provides-Extra: {extra}" in metadata
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert any(r.replace(" ", "").startswith("torch<3,>=2") or r.replace(" ", "").startswith("torch>=2") for r in base), base
    assert not [r for r in base if r.split(";")[0].strip().lower().startswith(("fastapi", "uvicorn", "matplotlib"))], base
    assert not [r for r in requires if "==" in r.split(";")[0]], "pins belong in constraints.txt"


def test_constraints_pin_what_is_installed():
    from importlib.metadata import PackageNotFoundError, version

    lines = [line.strip() for line in (REPO / "constraints.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    pins = dict(line.split("==", 1) for line in lines)
    assert len(pins) == len(lines) and "traffic-retrieval" not in {name.lower() for name in pins}
    for name in ("torch", "torchvision", "open_clip_torch", "faiss-cpu", "fastapi", "uvicorn", "prometheus_client", "pillow"):
        assert name in pins, f"{name} is not pinned in constraints.txt"
    stale = []
    for name, pinned in pins.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        if installed.split("+")[0] != pinned.split("+")[0]:
            stale.append(f"{name}: installed {installed}, pinned {pinned}")
    assert not stale, "regenerate constraints.txt (see its header): " + "; ".join(stale)
    assert "-c constraints.txt" in (REPO / "Makefile").read_text()


def test_installed_package_comes_from_the_wheel(venv):
    code = ("import json, traffic_retrieval, importlib.metadata as m, importlib.resources as r; "
            "files = r.files('traffic_retrieval'); "
            "print(json.dumps({'file': traffic_retrieval.__file__, 'version': m.version('traffic-retrieval'), "
            "'presets': sorted(p.name for p in files.joinpath('configs').iterdir()), "
            "'page': files.joinpath('serve/static/index.html').is_file()}))")
    result = run([venv / "bin" / "python", "-c", code], cwd=venv.parent, env=clean_env())
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert Path(found["file"]).is_relative_to(venv), found["file"]  # not the source tree, not the editable install
    assert found["page"] and {"cpu-tiny.yaml"} <= set(found["presets"])


def test_console_script_help_and_search(venv, tmp_path):
    from tiny_gallery import build_tiny_index, make_tiny_gallery

    script = venv / "bin" / "traffic-retrieval"
    result = run([script, "--help"], cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert "search" in result.stdout and "serve" in result.stdout

    source = make_tiny_gallery(tmp_path / "gallery", seed=5, test_pedestrians=3, test_vehicles=3)
    index = build_tiny_index(source, tmp_path / "INDEX")
    result = run([script, "search", "--index", index, "--device", "cpu", "-k", "3", "--json", AUDI], cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = result.stdout.splitlines()
    found = json.loads(line)
    assert found["query"] == AUDI and len(found["results"]) == 3
    assert all(Path(hit["path"]).is_relative_to(source["gallery"]) for hit in found["results"])


def test_serve_without_the_extra_names_it(venv, tmp_path):
    result = run([venv / "bin" / "traffic-retrieval", "serve", "--index", tmp_path], cwd=tmp_path, env=clean_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "pip install 'traffic-retrieval[serve]'" in result.stderr


def test_training_curves_without_the_extra_are_skipped_with_a_note(venv, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").write_text('2026-01-01 00:00:00 {"epoch": 1, "loss": 1.5}\n')
    code = "import sys; from traffic_retrieval.train.curves import write_training_curves; print(write_training_curves(sys.argv[1]))"
    result = run([venv / "bin" / "python", "-c", code, run_dir], cwd=tmp_path, env=clean_env())
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "None" and not (run_dir / "training_curves.png").exists()
    assert "traffic-retrieval[curves]" in result.stdout + result.stderr


# -- the Dockerfile ---------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    assert arguments.startswith("["), f"use the exec form: {arguments}"
    return json.loads(arguments)


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last matching pattern wins)."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_essentials():
    instructions = dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, arguments in instructions:
        by_keyword.setdefault(keyword, []).append(arguments)
    assert by_keyword["FROM"] == ["python:3.11-slim"]
    users = by_keyword["USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    assert [keyword for keyword, _ in instructions].index("USER") > max(i for i, (k, _) in enumerate(instructions) if k == "RUN")
    assert by_keyword["EXPOSE"] == ["8000"]
    (healthcheck,) = by_keyword["HEALTHCHECK"]
    assert "/api/health" in healthcheck and "127.0.0.1:8000" in healthcheck
    assert exec_form(by_keyword["ENTRYPOINT"][-1]) == ["traffic-retrieval"]
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in by_keyword["ARG"]  # CPU wheels unless told otherwise
    runs = " ".join(by_keyword["RUN"])
    assert '--index-url "$TORCH_INDEX"' in runs and "-c constraints.txt" in runs
    volumes = exec_form(by_keyword["VOLUME"][-1])
    assert {"/index", "/gallery"} <= set(volumes)


def test_dockerfile_command_is_a_valid_serve_command():
    from traffic_retrieval.cli import build_parser
    from traffic_retrieval.serve.settings import ServeSettings, allowed_hosts, check_settings

    (command,) = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "CMD"]
    argv = exec_form(command)
    args = build_parser().parse_args(argv)
    assert args.command == "serve"
    settings = ServeSettings(index=args.index, host=args.host, port=args.port, allowed_host=args.allowed_host or [])
    check_settings(settings)
    assert (str(settings.index), settings.host, settings.port) == ("/index", "0.0.0.0", 8000)
    assert "127.0.0.1" in allowed_hosts(settings)  # what the HEALTHCHECK sends


def test_dockerfile_copies_files_that_exist_and_are_in_the_build_context():
    copied = []
    for keyword, arguments in dockerfile_instructions():
        if keyword in ("COPY", "ADD"):
            assert keyword == "COPY", "ADD fetches and unpacks: use COPY"
            words = [w for w in shlex.split(arguments) if not w.startswith("--")]
            copied += words[:-1]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not dockerignored(source), f".dockerignore leaves {source} out of the build context"
    for kept_out in (".venv", ".git", "demo_output", "traffic_retrieval/__pycache__", "traffic_retrieval/serve/__pycache__/app.cpython-311.pyc"):
        assert dockerignored(kept_out), kept_out
