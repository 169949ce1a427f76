"""End-to-end checks that `FakeHub` is faithful enough for the real `huggingface_hub` client."""

from pathlib import Path

import pytest
from hub_server import GITATTRIBUTES, FakeHub, set_hf_offline
from huggingface_hub import (
    CommitOperation,
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = "test-user/tiny-model"
FILES = {
    "config.json": b'{"hidden_size": 8}\n',
    "weights/adapter.bin": bytes(range(256)) * 4,
    "README.md": b"---\nlicense: mit\n---\n# Tiny model\n",
}


def _upload_folder(api: HfApi, folder: Path, repo_id: str = REPO) -> str:
    for name, content in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Add files").oid


def _read_tree(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_create_repo_public_and_private(fake_hub: FakeHub) -> None:
    api = HfApi()
    url = api.create_repo("test-user/public-model")
    assert url.repo_id == "test-user/public-model"
    assert url.startswith(fake_hub.url)
    api.create_repo("test-user/secret-model", private=True)

    assert api.model_info("test-user/public-model").private is False
    info = api.model_info("test-user/secret-model")  # authenticated through HF_TOKEN
    assert info.private is True
    assert info.sha == fake_hub.commits("test-user/secret-model")[-1]
    # Like the Hub, a new repo holds one system commit with a `.gitattributes`.
    assert list(fake_hub.files("test-user/secret-model")) == [".gitattributes"]

    # Anonymous access to a private repo looks like a missing repo (401 + RepoNotFound).
    with pytest.raises(RepositoryNotFoundError) as exc:
        api.model_info("test-user/secret-model", token=False)
    assert exc.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/secret-model", ".gitattributes", token=False)
    assert api.repo_exists("test-user/public-model", token=False)
    assert not api.repo_exists("test-user/secret-model", token=False)

    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("test-user/public-model")
    assert conflict.value.response.status_code == 409
    assert api.create_repo("test-user/public-model", exist_ok=True).repo_id == url.repo_id


def test_writes_need_a_valid_token(fake_hub: FakeHub) -> None:
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi().create_repo("test-user/anonymous", token=False)
    assert exc.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as exc:
        HfApi(token="hf_wrong").model_info(REPO)
    assert exc.value.response.status_code == 401
    assert not isinstance(exc.value, RepositoryNotFoundError)  # "Invalid credentials"
    assert HfApi().whoami()["name"] == fake_hub.user
    assert ("POST", "/api/repos/create") in fake_hub.requests


def test_upload_folder_then_hf_hub_download(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    oid = _upload_folder(api, tmp_path / "src")

    assert oid == fake_hub.commits(REPO)[-1]
    assert fake_hub.files(REPO) == {".gitattributes": GITATTRIBUTES, **FILES}
    for name, content in FILES.items():
        path = Path(hf_hub_download(REPO, name))
        assert path.read_bytes() == content
        assert path.is_relative_to(constants.HF_HUB_CACHE)
        assert path.is_relative_to(tmp_path)
    siblings = api.model_info(REPO).siblings or []
    assert sorted(s.rfilename for s in siblings) == sorted([".gitattributes", *FILES])

    # Content went inline in the commit payload: no LFS batch, no Xet token.
    assert ("POST", f"/api/models/{REPO}/preupload/main") in fake_hub.requests
    assert ("POST", f"/api/models/{REPO}/commit/main") in fake_hub.requests
    assert not [p for _, p in fake_hub.requests if "lfs" in p or "xet" in p]


def test_snapshot_download_fetches_every_file(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    oid = _upload_folder(api, tmp_path / "src")

    folder = snapshot_download(REPO)
    assert Path(folder).name == oid
    assert _read_tree(folder) == fake_hub.files(REPO)
    assert set(FILES) < set(_read_tree(folder))


def test_download_at_an_older_revision(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi()
    api.create_repo(REPO)
    first = _upload_folder(api, tmp_path / "src")
    operations: list[CommitOperation] = [
        CommitOperationAdd("config.json", b'{"hidden_size": 16}\n'),
        CommitOperationDelete("weights/"),
    ]
    second = api.create_commit(REPO, operations, commit_message="v2").oid
    assert fake_hub.commits(REPO)[-2:] == [first, second]
    assert [c.commit_id for c in api.list_repo_commits(REPO)] == fake_hub.commits(REPO)[::-1]

    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b'{"hidden_size": 16}\n'
    old_config = hf_hub_download(REPO, "config.json", revision=first)
    assert Path(old_config).read_bytes() == FILES["config.json"]
    assert f"snapshots/{first}/" in Path(old_config).as_posix()
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "weights/adapter.bin")
    old_weights = hf_hub_download(REPO, "weights/adapter.bin", revision=first)
    assert Path(old_weights).read_bytes() == FILES["weights/adapter.bin"]
    assert _read_tree(snapshot_download(REPO, revision=first)) == fake_hub.files(REPO, first)

    api.create_branch(REPO, branch="v1", revision=first)
    assert (
        Path(hf_hub_download(REPO, "config.json", revision="v1")).read_bytes()
        == (FILES["config.json"])
    )
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch")


def test_missing_repo_and_missing_file(fake_hub: FakeHub) -> None:
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/does-not-exist", "config.json")

    fake_hub.seed(REPO, {"config.json": b"{}"})
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b"{}"
    with pytest.raises(EntryNotFoundError) as exc:
        hf_hub_download(REPO, "missing.txt")
    assert isinstance(exc.value, RemoteEntryNotFoundError)
    assert exc.value.response.headers["X-Error-Code"] == "EntryNotFound"
    assert HfApi().file_exists(REPO, "config.json")
    assert not HfApi().file_exists(REPO, "missing.txt")


def test_offline_mode_blocks_uncached_downloads(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.seed(REPO, {"config.json": b"{}", "other.json": b"[]"})
    cached = hf_hub_download(REPO, "config.json")

    set_hf_offline(monkeypatch)
    seen = len(fake_hub.requests)
    with pytest.raises(LocalEntryNotFoundError) as exc:
        hf_hub_download(REPO, "other.json")
    assert isinstance(exc.value.__cause__, OfflineModeIsEnabled)
    assert hf_hub_download(REPO, "config.json") == cached  # still served from the cache
    assert len(fake_hub.requests) == seen  # nothing reached the server
