import os

import pytest
import torch

os.environ.setdefault("EFFDL_NO_REEXEC", "1")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    from effdl.data import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def digits_task(digits):
    """A trained LeNet-300-100-style MLP on scikit-learn digits (real data, seconds to train)."""
    from effdl.core.tasks import ImageClassification
    from effdl.zoo import build

    torch.manual_seed(0)
    model = build("mlp", input_shape=digits.input_shape, num_classes=digits.num_classes, hidden=(64, 32))
    task = ImageClassification(model, digits.train, digits.val, digits.test, num_classes=digits.num_classes)
    task.train(model, epochs=15, lr=3e-3)
    return task


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server (the Debian package's binaries) on 127.0.0.1 and a free port, for
    the session: initdb into a temp dir, pg_ctl start, a database; yields its
    postgresql+psycopg:// URL (with a password) and stops the server at the end. Skips when no
    PostgreSQL binaries or no psycopg are installed (.ci/run installs both)."""
    import glob
    import importlib.util
    import pwd
    import secrets
    import shutil
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3].split(".")[0]))
    if not bins:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
    if importlib.util.find_spec("psycopg") is None:
        pytest.skip("psycopg is not installed (pip install 'effdl[postgres]')")
    bindir = Path(bins[-1]).parent
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user to run the server as")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="effdl-pg-"))
    if prefix:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    password = secrets.token_hex(8)
    (root / "pw").write_text(password + "\n")
    if prefix:
        os.chown(root / "pw", owner.pw_uid, owner.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, log = root / "data", root / "server.log"

    def run(*cmd, env=None):
        r = subprocess.run(prefix + [str(c) for c in cmd], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "LC_ALL": "C", **(env or {})}, cwd=root)
        if r.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {r.stderr[-2000:]}\n{tail}")

    run(bindir / "initdb", "-D", data, "-U", "effdl", f"--pwfile={root / 'pw'}", "--auth=scram-sha-256",
        "-E", "UTF8", "--locale=C")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", opts, "start")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "effdl", "effdl_test",
            env={"PGPASSWORD": password})
        yield f"postgresql+psycopg://effdl:{password}@127.0.0.1:{port}/effdl_test"
    finally:
        try:
            run(bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)
