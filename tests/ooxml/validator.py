"""Microsoft's Open XML SDK validator (`OpenXmlValidator`), loaded in-process with pythonnet.

Where it comes from: the PyPI wheel `python-redlines-ooxmlpowertools` (the `conformance`
extra) ships a self-contained .NET 8 app in `_binaries/linux-x64.tar.gz` that includes
`DocumentFormat.OpenXml.dll` (Open XML SDK 2.8.1) and the whole .NET runtime. A self-contained
app cannot be hosted as a component (hostfxr_initialize_for_runtime_config wants a
framework-dependent app), so the archive is laid out once as a tiny .NET install, a "dotnet
root", in a private cache folder:

    <root>/host/fxr/<ver>/libhostfxr.so
    <root>/shared/Microsoft.NETCore.App/<ver>/      the runtime pack's files, libhostpolicy.so
                                                    and a generated Microsoft.NETCore.App.deps.json
    <root>/sdk/DocumentFormat.OpenXml.dll           the SDK and its dependency System.IO.Packaging
    <root>/sdk/ooxml_validator.runtimeconfig.json   framework-dependent on Microsoft.NETCore.App <ver>

The lists of runtime files and SDK files are read from the app's own `redlines.deps.json`.
`<root>` is `<venv>/var/ooxml-sdk/<archive sha256[:16]>` (or, outside a venv or when it is not
writable, `<tmp>/ooxml-sdk-<uid>/...`); the folder must be owned by this user and not writable
by anyone else, since native code is loaded from it.

Use `load_validator()` (raises `SdkUnavailable` with a one-line reason) or `validate(path)`.
Run as `python -m tests.ooxml.validator FILE.xlsx ...` to print the errors of some files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

WHEEL = "python-redlines-ooxmlpowertools"
ARCHIVE = "linux-x64.tar.gz"
APP_DEPS = "redlines.deps.json"
FRAMEWORK = "Microsoft.NETCore.App"
SDK_PACKAGE = "DocumentFormat.OpenXml"
CONFIG_NAME = "ooxml_validator.runtimeconfig.json"
DONE_MARK = ".layout-complete"


class SdkUnavailable(RuntimeError):
    """The SDK or its runtime cannot be had here; str() is a one-line reason."""


class ValidationError(NamedTuple):
    """One finding of OpenXmlValidator: the part's URI, the XPath in it, the SDK's text."""

    part: str
    path: str
    description: str


@dataclass(frozen=True)
class Layout:
    """A laid-out dotnet root: where hostfxr finds the framework and the SDK assemblies."""

    root: Path
    runtime_version: str
    runtime_config: Path
    sdk_assemblies: tuple[Path, ...]


# ----------------------------------------------------------------------------- layout


def _archive() -> Path:
    """The wheel's archive of the self-contained app, or SdkUnavailable."""
    if not sys.platform.startswith("linux") or os.uname().machine not in ("x86_64", "AMD64"):
        raise SdkUnavailable(f"the {WHEEL} wheel ships a linux-x64 runtime only")
    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise SdkUnavailable(f"{WHEEL} is not installed (pip install -e '.[conformance]')") from None
    for f in dist.files or ():
        if f.name == ARCHIVE:
            return Path(dist.locate_file(f)).resolve()
    raise SdkUnavailable(f"{WHEEL} {dist.version} has no _binaries/{ARCHIVE}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _private_dir(path: Path) -> Path:
    """Create `path` (0700) if needed; refuse one that another user owns or others can write."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise SdkUnavailable(f"{path} is not a plain folder")
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise SdkUnavailable(f"{path} is not owned by this user or others can write to it")
    return path


def _cache_base() -> Path:
    """<venv>/var/ooxml-sdk when running in a writable venv, else a per-user tmp folder."""
    if sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):
        return Path(sys.prefix) / "var" / "ooxml-sdk"
    return Path(tempfile.gettempdir()) / f"ooxml-sdk-{os.getuid()}"


def _runtime_target(deps: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The runtime target name (".NETCoreApp,Version=v8.0/linux-x64") and its libraries."""
    name = deps["runtimeTarget"]["name"]
    return name, deps["targets"][name]


def _framework_deps(target: str, pack: str, assets: dict[str, Any]) -> dict[str, Any]:
    """A Microsoft.NETCore.App.deps.json listing the runtime pack's files as the framework."""
    lib = pack.replace("runtimepack.", "", 1)
    return {
        "runtimeTarget": {"name": target, "signature": ""},
        "compilationOptions": {},
        "targets": {target.split("/")[0]: {}, target: {lib: assets}},
        "libraries": {lib: {"type": "package", "serviceable": False, "sha512": ""}},
    }


def _sdk_files(libs: dict[str, Any]) -> list[str]:
    """File names of DocumentFormat.OpenXml and every package it depends on (transitively)."""
    by_name = {key.split("/")[0]: value for key, value in libs.items()}
    todo, seen, files = [SDK_PACKAGE], set(), []
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        files += [Path(p).name for p in by_name[name].get("runtime", {})]
        todo += list(by_name[name].get("dependencies", {}))
    return files


def _build(archive: Path, dest: Path) -> None:
    """Unpack the app into `dest` and rearrange it into a dotnet root (see module docstring)."""
    raw = dest / "raw"
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(raw, filter="data")
        else:  # the same refusal by hand: plain files and folders inside `raw` only
            for m in tar.getmembers():
                if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise SdkUnavailable(f"{archive.name}: unexpected member {m.name!r}")
            tar.extractall(raw)
    deps = json.loads((raw / APP_DEPS).read_text())
    target, libs = _runtime_target(deps)
    pack = next((k for k in libs if k.startswith(f"runtimepack.{FRAMEWORK}.Runtime.")), None)
    if pack is None:
        raise SdkUnavailable(f"{APP_DEPS} lists no {FRAMEWORK} runtime pack")
    version = pack.split("/")[1]
    assets = {kind: libs[pack].get(kind, {}) for kind in ("runtime", "native")}
    fw = dest / "shared" / FRAMEWORK / version
    fxr = dest / "host" / "fxr" / version
    sdk = dest / "sdk"
    for d in (fw, fxr, sdk):
        d.mkdir(parents=True)
    for name in [*assets["runtime"], *assets["native"]]:
        os.replace(raw / name, fw / name)
    shutil.copy2(fw / "libhostfxr.so", fxr / "libhostfxr.so")
    (fw / f"{FRAMEWORK}.deps.json").write_text(json.dumps(_framework_deps(target, pack, assets), indent=1))
    names = _sdk_files(libs)
    if f"{SDK_PACKAGE}.dll" not in names:
        raise SdkUnavailable(f"{APP_DEPS} lists no {SDK_PACKAGE}.dll")
    for name in names:
        os.replace(raw / name, sdk / name)
    (sdk / CONFIG_NAME).write_text(json.dumps({"runtimeOptions": {
        "tfm": "net" + target.split("/")[0].split("Version=v")[1],
        "framework": {"name": FRAMEWORK, "version": version},
        "rollForward": "Disable",
        "configProperties": {"System.Globalization.Invariant": True},
    }}, indent=1))
    shutil.rmtree(raw)
    (dest / DONE_MARK).write_text(json.dumps({"runtime": version, "sdk": names}))


def ensure_layout(base: Path | None = None) -> Layout:
    """Lay out (once) and return the dotnet root for the installed wheel's archive."""
    archive = _archive()
    base = _private_dir(base or _cache_base())
    root = base / _sha256(archive)[:16]
    if not (root / DONE_MARK).is_file():
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
        try:
            _build(archive, staging)
            try:
                os.rename(staging, root)
            except OSError:  # another process laid it out first
                if not (root / DONE_MARK).is_file():
                    raise
        except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
            raise SdkUnavailable(f"cannot lay out the .NET runtime from {archive.name}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _private_dir(root)
    done = json.loads((root / DONE_MARK).read_text())
    return Layout(root=root, runtime_version=done["runtime"],
                  runtime_config=root / "sdk" / CONFIG_NAME,
                  sdk_assemblies=tuple(root / "sdk" / n for n in done["sdk"]))


# ----------------------------------------------------------------------------- the validator


class Validator:
    """OpenXmlValidator for the newest file-format version this SDK knows (2.8.1: Office2013)."""

    def __init__(self, layout: Layout):
        import clr_loader
        import pythonnet

        if pythonnet._LOADED:  # one CLR per process: it must be ours
            rt = pythonnet._RUNTIME
            if Path(getattr(rt, "dotnet_root", "")) != layout.root:
                raise SdkUnavailable(f"another .NET runtime is already loaded in this process ({rt})")
        else:
            try:
                runtime = clr_loader.get_coreclr(runtime_config=layout.runtime_config,
                                                 dotnet_root=layout.root)
                pythonnet.set_runtime(runtime)
                pythonnet.load()
            except Exception as exc:  # clr_loader/hostfxr report failures as plain exceptions
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise SdkUnavailable(f"hostfxr cannot start .NET {layout.runtime_version}: {reason}") from exc
        import clr  # only after pythonnet.load(): importing it loads the runtime

        for asm in layout.sdk_assemblies:
            clr.AddReference(str(asm))
        from DocumentFormat.OpenXml import FileFormatVersions
        from DocumentFormat.OpenXml.Packaging import SpreadsheetDocument
        from DocumentFormat.OpenXml.Validation import OpenXmlValidator
        from System import Enum

        versions = [v for v in Enum.GetValues(FileFormatVersions) if int(v) & (int(v) - 1) == 0 and int(v)]
        self.file_format = max(versions, key=int)
        self.sdk_version = str(clr.GetClrType(OpenXmlValidator).Assembly.GetName().Version)
        self.runtime_version = layout.runtime_version
        self._open = SpreadsheetDocument.Open
        self._validator = OpenXmlValidator(self.file_format)
        self._validator.MaxNumberOfErrors = 0  # 0: report every error, not the first 1000
        self._lock = threading.Lock()

    def validate(self, path: str | os.PathLike[str]) -> list[ValidationError]:
        """Every error the SDK finds in the .xlsx at `path`; a package it cannot open is one error."""
        from System import Exception as DotNetException

        with self._lock:
            try:
                doc = self._open(str(Path(path).resolve()), False)
            except DotNetException as exc:
                return [ValidationError("/", "", f"cannot open the package: {exc.GetType().Name}: {exc.Message}")]
            try:
                errors = [
                    ValidationError(
                        part=str(e.Part.Uri) if e.Part is not None else "/",
                        path=str(e.Path.XPath) if e.Path is not None and e.Path.XPath is not None else "",
                        description=f"[{e.Id}] {e.Description}" if e.Id else str(e.Description),
                    )
                    for e in self._validator.Validate(doc)
                ]
            except DotNetException as exc:  # e.g. a part that is not well-formed XML
                errors = [ValidationError("/", "", f"validation stopped: {exc.GetType().Name}: {exc.Message}")]
            finally:
                doc.Dispose()
        return errors


_LOAD_LOCK = threading.Lock()
_STATE: dict[str, Validator | SdkUnavailable] = {}


def load_validator() -> Validator:
    """The process's one Validator (the CLR loads once per process); SdkUnavailable if none."""
    with _LOAD_LOCK:
        if "v" not in _STATE:
            try:
                _STATE["v"] = Validator(ensure_layout())
            except SdkUnavailable as exc:
                _STATE["v"] = exc
            except ImportError as exc:
                _STATE["v"] = SdkUnavailable(f"{exc.name or exc} is not installed (pip install -e '.[conformance]')")
        state = _STATE["v"]
    if isinstance(state, SdkUnavailable):
        raise state
    return state


def validate(path: str | os.PathLike[str]) -> list[ValidationError]:
    """OpenXmlValidator's errors for the workbook at `path` (SdkUnavailable if it cannot run)."""
    return load_validator().validate(path)


def main(argv: list[str] | None = None) -> int:
    """Print each file's errors; exit 1 if any file has one, 2 if the SDK cannot run."""
    paths = sys.argv[1:] if argv is None else argv
    try:
        v = load_validator()
    except SdkUnavailable as exc:
        print(f"OpenXmlValidator unavailable: {exc}", file=sys.stderr)
        return 2
    bad = 0
    for p in paths:
        errors = v.validate(p)
        bad += bool(errors)
        print(f"{p}: {len(errors)} error(s) (SDK {v.sdk_version}, {v.file_format})")
        for e in errors:
            print(f"  {e.part} {e.path}: {e.description}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
