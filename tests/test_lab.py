"""JupyterLab in a real browser: notebook 00, executed at the tiny preset, opened in headless Chromium through a
Lab server on loopback; its title, a code cell and a figure must be rendered in the page."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from weightspace import reproduce

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,800"]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A Lab server on loopback, rooted at a folder holding notebook 00 executed at the tiny preset."""
    if _chromium() is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; .ci/run installs it)")
    root = tmp_path_factory.mktemp("lab")
    backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"   # figures as outputs, as in Lab
    try:
        reproduce.run("tiny", only=["00"], out=root / "run", progress=False, log=lambda *a: None)
    finally:
        os.environ.pop("MPLBACKEND") if backend is None else os.environ.update(MPLBACKEND=backend)
    executed = root / "run" / "notebooks" / "00_quickstart.ipynb"
    # render every cell, not only those in view (Lab 4 virtualises long notebooks by default)
    settings = root / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port, token = _free_port(), "weightspace-test"
    log = open(root / "lab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={executed.parent}",
         f"--LabApp.user_settings_dir={root / 'settings'}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"jupyter lab did not answer on {url}: {(root / 'lab.log').read_text()[-2000:]}")
        yield url, token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.mark.notebooks
def test_notebook_00_renders_in_jupyterlab(lab):
    url, token, root = lab
    page = f"{url}/lab/tree/00_quickstart.ipynb?token={token}"
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--virtual-time-budget=30000", "--dump-dom", page],
                             capture_output=True, text=True, timeout=180).stdout
    (root / "dom.html").write_text(dom)
    assert "00 · " in dom, f"the notebook's title is not on the page (DOM in {root / 'dom.html'})"
    assert "jp-CodeCell" in dom and "build_model_trees" in dom, "no code cell rendered"
    assert 'src="data:image/png' in dom, "no figure output rendered"
    assert "jp-OutputArea-output" in dom


@pytest.mark.notebooks
def test_lab_refuses_the_api_without_the_token(lab):
    url, _, _ = lab
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}/api/contents", timeout=5)
    assert e.value.code == 403
