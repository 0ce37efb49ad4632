"""Regenerate docs/report-routing.png and docs/report-ablation.png: the demo studies' reports, whole page,
as headless Chromium draws them.

    .venv/bin/python tools/screenshot_reports.py            # runs demo and demo-ablation in a temp repo
    .venv/bin/python tools/screenshot_reports.py --reports reports   # screenshots reports/<study>/report.html

Needs Debian's chromium and chromedriver (`tools/install-browser.sh`) and selenium (the `dev` extra).
The demos run offline on the CPU in about half a minute each.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = {"demo": "report-routing.png", "demo-ablation": "report-ablation.png"}
PLAN_FILES = ("study.yaml", "prompts.jsonl", "rubric.yaml", "thresholds.yaml")
WIDTH = 1280
MAX_HEIGHT = 16000


def _run(*args: str, cwd: Path) -> None:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed in {cwd}:\n{result.stdout}{result.stderr}")


def build_reports(workdir: Path) -> Path:
    """Freeze, capture, label and audit the demo studies in a fresh git repo under ``workdir``."""
    repo = workdir / "repo"
    repo.mkdir(parents=True)
    _run("git", "init", "-q", "-b", "main", cwd=repo)
    for study in SHOTS:
        target = repo / "preregistrations" / study
        target.mkdir(parents=True)
        source = ROOT / "preregistrations" / study
        spec = yaml.safe_load((source / "study.yaml").read_text()) or {}
        # the plan, the extra files it freezes and the SAEs it names: never the shipped study's lock or journal
        for name in (*PLAN_FILES, *spec.get("files", [])):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
            (target / name).chmod(0o644)
        for sae in (spec.get("ablation") or {}).get("saes", []):
            if not (repo / sae["path"]).exists():
                shutil.copytree(ROOT / sae["path"], repo / sae["path"])
    _run("git", "add", "-A", cwd=repo)
    _run("git", "-c", "user.name=lockstep", "-c", "user.email=lockstep@localhost", "commit", "-q", "-m", "studies",
         cwd=repo)
    lockstep = [sys.executable, "-m", "lockstep"]
    for study in SHOTS:
        path = f"preregistrations/{study}"
        _run(*lockstep, "prereg", path, cwd=repo)
        _run("git", "add", "-A", cwd=repo)
        _run("git", "-c", "user.name=lockstep", "-c", "user.email=lockstep@localhost", "commit", "-q", "-m",
             f"freeze {study}", cwd=repo)
        _run(*lockstep, "capture", path, "--no-progress", cwd=repo)
        _run(*lockstep, "label", path, cwd=repo)
        _run(*lockstep, "audit", path, cwd=repo)
    return repo / "reports"


def screenshot(html: Path, png: Path, profile: Path) -> None:
    """The whole page of ``html`` at 1280 CSS pixels wide (height capped at 16,000)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--force-device-scale-factor=1", f"--window-size={WIDTH},1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(html.as_uri())
        height = min(int(driver.execute_script("return document.documentElement.scrollHeight")), MAX_HEIGHT)
        driver.set_window_size(WIDTH, height)
        inner = int(driver.execute_script("return window.innerHeight"))
        driver.set_window_size(WIDTH, height + (height - inner))  # the window's chrome is not page
        png.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(png)):
            sys.exit(f"chromium could not screenshot {html}")
    finally:
        driver.quit()
    _shrink(png)


def _shrink(png: Path) -> None:
    """Re-save with a 256-colour palette (Pillow, which matplotlib depends on): a quarter of the bytes,
    and a page of flat colours and text looks the same."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=Path, help="a reports/ folder holding demo/ and demo-ablation/ (default: build them)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go (default: docs/)")
    args = parser.parse_args(argv)
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        sys.exit(f"{CHROMIUM} or {CHROMEDRIVER} is missing: run tools/install-browser.sh")
    with tempfile.TemporaryDirectory(prefix="lockstep-shots-") as tmp:
        reports = args.reports or build_reports(Path(tmp))
        for study, name in SHOTS.items():
            html = reports / study / "report.html"
            if not html.is_file():
                sys.exit(f"{html} does not exist: run `make audit STUDY={study}` or leave out --reports")
            screenshot(html.resolve(), args.out / name, Path(tmp) / f"profile-{study}")
            print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
