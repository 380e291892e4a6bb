"""The engine registry is the one list of engines: validation, form and ownership read it."""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st

from core.commands import validate_job
from core.errors import Invalid
from core.ownership import Owner, owner_conflict
from engines.base import Engine
from engines.destinations import LocalFolder, ResticRepository
from engines.registry import (
    ANY_DESTINATION,
    BY_NAME,
    ENGINE_NAMES,
    ENGINES,
    EngineInfo,
    catalog,
    destination_key,
    get_engine,
    option_problems,
)
from models.job import JobInvalid, JobSpec
from server.forms import CHOICES

Client = TestClient[web.Request, web.Application]


def job(engine: str, destination: str, **options: object) -> dict[str, object]:
    """A job body for validation only (nothing on disk is touched)."""
    return {"name": "n", "engine": engine, "sources": ["/srv/data"],
            "destination": destination, "options": options}


@pytest.mark.parametrize("name", ENGINE_NAMES)
def test_every_engine_in_the_registry_can_be_constructed(name: str) -> None:
    engine = get_engine(name)
    assert isinstance(engine, Engine) and type(engine) is BY_NAME[name].engine_class()


@pytest.mark.parametrize("entry", ENGINES, ids=ENGINE_NAMES)
def test_option_defaults_pass_their_own_checks(entry: EngineInfo) -> None:
    defaults = {o.name: o.default for o in entry.options if o.default is not None}
    for option in entry.options:
        assert option.help and option.type
        if option.default is not None:
            assert option.check(option.default) is None, option.name
    required = {o.name: "/etc/hostname" for o in entry.options if o.required}
    assert option_problems(entry.name, {**defaults, **required}) is None


def test_an_unknown_engine_is_refused_with_the_registrys_names() -> None:
    with pytest.raises(JobInvalid) as err:
        JobSpec.from_input(job("zfs", "/backups/x"), engines=catalog())
    assert err.value.errors["engine"] == f"choose an engine: {', '.join(ENGINE_NAMES)}"


async def test_the_form_offers_exactly_the_registrys_engines(app_client: Client) -> None:
    assert tuple(CHOICES["engine"]) == ENGINE_NAMES
    assert [name for name, _ in CHOICES["engine_labels"]] == list(ENGINE_NAMES)
    html = unescape(await (await app_client.get("/jobs/new")).text())
    select = html[html.index('name="engine"'):]
    select = select[:select.index("</select>")]
    assert re.findall(r'<option value="([^"]+)"', select) == list(ENGINE_NAMES)
    for info in ENGINES:  # the options field's help comes from the registry too
        for option in info.options:
            assert option.name in html and option.help.split(";")[0] in html


def test_a_missing_required_option_is_refused_with_its_help_text() -> None:
    password = BY_NAME["restic"].option("password_file")
    assert password is not None and password.required
    with pytest.raises(Invalid) as err:
        validate_job(job("restic", "/backups/r"))
    message = err.value.errors["options"]
    assert "password_file is needed by the restic engine" in message
    assert password.help in message


def test_an_unknown_option_names_the_known_ones() -> None:
    with pytest.raises(Invalid) as err:
        validate_job(job("archive", "/backups/a", speed=3))
    known = ", ".join(sorted(o.name for o in BY_NAME["archive"].options))
    assert err.value.errors["options"] == (f"speed is not an option of the archive engine "
                                           f"(it takes {known})")


def test_the_same_restic_url_written_differently_is_one_destination() -> None:
    a, b = "sftp:backup@host:/srv/repo", "SFTP:backup@host:/srv/repo/"
    assert destination_key("restic", a) == destination_key("restic", b)
    owner = Owner("j1", "Photos", a, "restic")
    conflict = owner_conflict(b, [owner], "restic")
    assert conflict is not None and "is used by job Photos (id j1)" in conflict
    inside = owner_conflict("s3:host/bucket/sub", [Owner("j2", "S", "s3:host/bucket/", "restic")],
                            "restic")
    assert inside is not None and "is inside s3:host/bucket/" in inside
    assert owner_conflict("sftp:backup@host:/srv/repo2", [owner], "restic") is None
    assert owner_conflict("/srv/repo", [owner], "restic") is None  # local vs remote


def test_a_restic_url_passes_through_unchanged_once_the_engine_takes_one() -> None:
    remote = {**catalog(), "restic": ResticRepository(remote=True)}
    url = "rest:https://user@host:8000/repo/"
    spec = JobSpec.from_input(job("restic", f"  {url}"), engines=remote)
    assert spec.destination == url  # restic reads the URL, not us
    assert JobSpec.from_input(spec.to_dict(), engines=remote) == spec
    local = JobSpec.from_input(job("restic", "local:/backups/r/"), engines=remote)
    assert local.destination == "local:/backups/r"
    with pytest.raises(JobInvalid) as err:  # local:/ inside a source is still caught
        JobSpec.from_input(job("restic", "local:/srv/data/repo"), engines=remote)
    assert "is inside source /srv/data" in err.value.errors["destination"]
    # Today the restic engine opens a local folder only: a URL is refused when saved.
    with pytest.raises(Invalid) as refused:
        validate_job(job("restic", url, password_file="/etc/hostname"))
    assert "remote repository" in refused.value.errors["destination"]
    with pytest.raises(ValueError, match="must be an absolute path"):
        LocalFolder().clean("sftp:host:/srv/repo")  # mirror, archive, rsync: folders only


def test_a_local_destination_and_a_symlink_to_it_conflict(tmp_path: Path) -> None:
    real = tmp_path / "backup"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    owner = Owner("j1", "Photos", str(real), "mirror")
    conflict = owner_conflict(str(link), [owner], "mirror")
    assert conflict is not None and "is used by job Photos (id j1)" in conflict
    inside = owner_conflict(str(link / "sub"), [owner], "rsync")
    assert inside is not None and "is inside" in inside
    # The runner's key is lexical (no I/O on the event loop); saves resolve symlinks.
    assert destination_key("mirror", str(real) + "/") == str(real)


DESTINATION_TEXT = st.one_of(
    st.text(max_size=40), st.none(), st.integers(),
    st.sampled_from(["/a/./b/", "//x", "local:/a/b", "LOCAL:/a", "local:", "sftp:", "s3:/",
                     "sftp:h:/r/", "rest:http://h:8000/", "C:\\x", "/a/../b", " /a "]),
    st.builds(lambda s, t: f"{s}:{t}", st.sampled_from(["sftp", "S3", "rest", "local", "x"]),
              st.text(max_size=20)))


@settings(max_examples=300, deadline=None)
@given(DESTINATION_TEXT)
@example("/")  # once two keys for the root: "/" and "//"
@example("//x/")
def test_every_destination_kind_cleans_any_text_to_a_stable_destination_or_a_message(
        raw: object) -> None:
    for kind in [*catalog().values(), ANY_DESTINATION]:
        try:
            clean = kind.clean(raw)
        except ValueError as err:
            assert str(err).startswith("destination")
            continue
        assert kind.clean(clean) == clean  # what is stored is taken again unchanged
        assert kind.key(clean) == kind.key(clean + "/") or not clean.startswith("/")
        local = kind.local_path(clean)
        assert local is None or (local.is_absolute() and ".." not in local.parts)


def test_the_engine_spec_reads_its_destination_the_way_its_engine_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local folder is checked (made, refused inside a source); a URL is left to restic."""
    from core.pruning import backup_spec
    from engines.base import BackupSpec, DestinationInsideSource, DestinationNotWritable
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    local = backup_spec({"engine": "mirror", "sources": [str(src)],
                         "destination": str(tmp_path / "b")}, "j1")
    assert local.is_local and local.location == str(tmp_path / "b")
    local.check_destination()
    assert (tmp_path / "b").is_dir()
    with pytest.raises(DestinationInsideSource):
        backup_spec({"engine": "rsync", "sources": [str(src)],
                     "destination": str(src / "in")}, "j1").check_destination()
    with pytest.raises(DestinationNotWritable, match="not an absolute path"):
        BackupSpec.build([src], "relative/b").check_destination()
    # A repository URL is not a folder here: nothing named after it is made.
    url = "sftp:backup@host:/srv/repo"
    remote = BackupSpec.build([src], url, kind=ResticRepository(remote=True))
    assert not remote.is_local and remote.location == url
    remote.check_destination()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "src"]
    assert backup_spec({"engine": "restic", "sources": [str(src)],
                        "destination": "/srv/repo"}, "j1").is_local
