"""Every optional extra, missing: the command that needs it says so in one line, naming the
extra, and exits 2; never a traceback.

No venv is built without each extra. Each case runs the real ``secagg`` entry point
(``secagg.launch.main``) in a fresh interpreter whose import system cannot see the extra's
modules: every finder of ``sys.meta_path`` is wrapped so that it does not find them, which is
exactly what an interpreter without them does (``import sklearn`` raises
``ModuleNotFoundError``, ``importlib.util.find_spec("sklearn")`` is None). The assertions are
on what the operator sees: the exit code and the whole of stderr.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from secagg.errors import MissingExtra, SecAggError
from secagg.extras import EXTRAS, missing_extra, require

ROOT = Path(__file__).resolve().parent.parent

# Runs `secagg ARGS...` with the top-level modules in argv[1] (comma-separated) hidden.
WITHOUT = textwrap.dedent(
    """
    import sys

    hidden = frozenset(sys.argv[1].split(","))
    assert not hidden & set(sys.modules), "already imported: cannot hide it"


    class Blind:
        # One of the interpreter's own finders, that does not find the hidden modules.
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in hidden:
                return None
            return self.inner.find_spec(name, path, target)

        def __getattr__(self, name):
            return getattr(self.inner, name)


    sys.meta_path[:] = [Blind(finder) for finder in sys.meta_path]
    sys.argv = ["secagg", *sys.argv[2:]]
    from secagg.launch import main

    main()
    """
)


def secagg_without(extra: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``secagg ARGS`` in an interpreter where ``extra`` is not installed."""
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, ",".join(EXTRAS[extra]), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def secagg(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secagg", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def line(command: str, extra: str, purpose: str) -> str:
    return (
        f"error: secagg {command} needs the {extra} extra (for {purpose}): "
        f"pip install 'secagg[{extra}]'"
    )


def assert_refused(done: subprocess.CompletedProcess[str], expected: str) -> None:
    """Exit 2, and stderr is exactly the one line ``expected``."""
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    assert done.stderr.splitlines() == [expected], done.stderr
    assert done.returncode == 2, done.stderr


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Deployments made where every extra is installed (four clients, three make a round,
    so serve warns of nothing): the random task, the digits, the digits in PyTorch, CKKS,
    distributed DP."""
    base = tmp_path_factory.mktemp("deployments")
    for name, *options in (
        ("random",),
        ("digits", "--task", "digits"),
        ("torch", "--task", "digits-torch"),
        ("ckks", "--scheme", "ckks"),
        ("dp", "--dp-epsilon", "8"),
    ):
        done = secagg("certs", base / name, "--clients", "4", "--min-clients", "3", *options)
        assert done.returncode == 0, done.stderr
    return base


def config(deployments: Path, name: str) -> list[str | Path]:
    return ["--config", deployments / name / "deployment.toml"]


def join_args(deployments: Path, name: str) -> list[str | Path]:
    identity = deployments / name / "clients" / "client-0.key"
    return ["join", *config(deployments, name), "--identity", identity, "--max-attempts", "1"]


# ----------------------------------------------------------------- the table of extras


def test_the_table_of_extras_is_pyproject_s_less_the_tools() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(EXTRAS) == set(declared["optional-dependencies"]) - {"dev"}


def test_a_missing_extra_is_found_behind_whatever_was_raised_from_it() -> None:
    bare = ModuleNotFoundError("No module named 'sklearn.datasets'", name="sklearn.datasets")
    wrapped = ValueError("raised from it")
    wrapped.__cause__ = bare
    found = missing_extra(wrapped)
    assert found is not None and (found.extra, found.name) == ("fl", "sklearn")
    typed = MissingExtra("bench", "--plots")
    wrapped.__cause__ = typed
    assert missing_extra(wrapped) is typed
    # Raised while handling it (the context) counts, unless the raise said `from None`.
    wrapped.__cause__ = None
    wrapped.__suppress_context__ = False  # setting a cause had set it
    wrapped.__context__ = ModuleNotFoundError("No module named 'torch'", name="torch")
    assert missing_extra(wrapped) is not None
    wrapped.__suppress_context__ = True
    assert missing_extra(wrapped) is None
    # Not an extra's module, or not a missing module at all: not a missing extra.
    assert missing_extra(ModuleNotFoundError("No module named 'x'", name="x")) is None
    assert missing_extra(ValueError("unrelated")) is None


def test_missing_extra_is_one_of_ours_and_an_import_error_and_crosses_processes() -> None:
    exc = MissingExtra("he", "CKKS", "tenseal")
    assert isinstance(exc, SecAggError) and isinstance(exc, ImportError)
    assert str(exc) == "CKKS needs the he extra: pip install 'secagg[he]'"
    assert exc.name == "tenseal"
    back = pickle.loads(pickle.dumps(exc))
    assert (back.extra, back.purpose, back.name, str(back)) == ("he", "CKKS", "tenseal", str(exc))
    require("fl", "the digits data")  # installed here: nothing to say


# ----------------------------------------------------------------- one extra at a time


def test_without_fl_the_demo_and_the_digits_task_say_so(deployments: Path, tmp_path: Path) -> None:
    assert_refused(secagg_without("fl", "demo"), line("demo", "fl", "the digits data"))
    target = tmp_path / "digits"
    done = secagg_without("fl", "certs", target, "--task", "digits")
    assert_refused(done, line("certs", "fl", "the digits data"))
    assert not target.exists()  # refused before the first file
    done = secagg_without("fl", "compare", "--demo-updates", "--schemes", "plaintext")
    assert_refused(done, line("compare", "fl", "the digits data"))
    done = secagg_without("fl", "serve", *config(deployments, "digits"), "--cohort-wait", "1")
    assert_refused(done, line("serve", "fl", "the digits data"))
    done = secagg_without("fl", *join_args(deployments, "digits"))
    assert_refused(done, line("join", "fl", "the digits data"))


def test_without_he_compare_leaves_ckks_out_and_says_why() -> None:
    done = secagg_without("he", "compare", "--clients", "3", "--dim", "10", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "note: the ckks row is left out because CKKS needs the he extra: pip install 'secagg[he]'"
    ]
    figures = json.loads(done.stdout)
    assert [row["scheme"] for row in figures["rows"]] == [
        "plaintext",
        "secagg",
        "secagg-active",
        "secagg+",
        "secagg+-active",
    ]
    assert figures["left_out"] == {"ckks": "CKKS needs the he extra: pip install 'secagg[he]'"}


def test_without_he_every_ckks_command_says_so(deployments: Path, tmp_path: Path) -> None:
    # Asked for by name, CKKS is refused before the first row runs.
    done = secagg_without("he", "compare", "--clients", "3", "--dim", "10", "--schemes", "ckks")
    assert_refused(done, line("compare", "he", "CKKS"))
    done = secagg_without("he", "compare", "--schemes", "plaintext,secagg,ckks")
    assert_refused(done, line("compare", "he", "CKKS"))
    done = secagg_without("he", "simulate", "--scheme", "ckks", "--clients", "3", "--dim", "10")
    assert_refused(done, line("simulate", "he", "CKKS"))
    target = tmp_path / "ckks"
    assert_refused(
        secagg_without("he", "certs", target, "--scheme", "ckks"), line("certs", "he", "CKKS")
    )
    assert not target.exists()
    assert_refused(secagg_without("he", "demo", "--scheme", "ckks"), line("demo", "he", "CKKS"))
    done = secagg_without("he", "serve", *config(deployments, "ckks"), "--cohort-wait", "1")
    assert_refused(done, line("serve", "he", "CKKS"))
    done = secagg_without("he", *join_args(deployments, "ckks"))
    assert_refused(done, line("join", "he", "CKKS"))


def test_without_dp_every_dp_option_says_so(deployments: Path) -> None:
    purpose = "distributed DP accounting"
    done = secagg_without("dp", "simulate", "--clients", "5", "--dim", "10", "--dp-epsilon", "4")
    assert_refused(done, line("simulate", "dp", purpose))
    done = secagg_without("dp", "compare", "--schemes", "plaintext", "--dp-epsilon", "4")
    assert_refused(done, line("compare", "dp", purpose))
    assert_refused(secagg_without("dp", "demo", "--dp-epsilon", "8"), line("demo", "dp", purpose))
    done = secagg_without("dp", "serve", *config(deployments, "dp"), "--cohort-wait", "1")
    assert_refused(done, line("serve", "dp", purpose))
    assert_refused(secagg_without("dp", *join_args(deployments, "dp")), line("join", "dp", purpose))


def test_without_metrics_serve_metrics_port_says_so(deployments: Path) -> None:
    done = secagg_without("metrics", "serve", *config(deployments, "random"), "--metrics-port", "0")
    assert_refused(done, line("serve", "metrics", "--metrics-port"))


def test_without_torch_the_pytorch_options_say_so(deployments: Path) -> None:
    done = secagg_without("torch", "demo", "--framework", "torch")
    assert_refused(done, line("demo", "torch", "--framework torch"))
    done = secagg_without("torch", *join_args(deployments, "torch"))
    assert_refused(done, line("join", "torch", "the PyTorch adapters"))


def test_without_ray_the_ray_backend_says_so() -> None:
    done = secagg_without("ray", "simulate", "--clients", "3", "--dim", "10", "--backend", "ray")
    assert_refused(done, line("simulate", "ray", "the ray backend"))


def test_without_bench_compare_plots_says_so_before_comparing(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    done = secagg_without("bench", "compare", "--schemes", "plaintext", "--plots", plots)
    assert_refused(done, line("compare", "bench", "--plots"))
    assert done.stdout == ""  # no table: refused before the comparison ran
    assert not plots.exists()


def test_without_flower_the_integration_names_its_extra() -> None:
    # secagg.flower is a library, not a command: importing it says what to install, and
    # the command line's net would turn it into the one line.
    script = textwrap.dedent(
        """
        import sys
        sys.modules["flwr"] = None  # as if Flower were not installed
        from secagg.extras import missing_extra
        try:
            import secagg.flower.client
        except ImportError as exc:
            print(exc)
            print(missing_extra(exc).extra)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    message, extra = done.stdout.splitlines()
    assert "pip install 'secagg[flower]'" in message
    assert extra == "flower"
