"""Readers of the published formats, on tiny fixtures written in exactly those formats."""

from __future__ import annotations

import http.server
import json
import pickle
import re
import threading
import time

import datasets
import pytest
import torch
from PIL import Image

from omninegclip.building.sources import (
    TRAIN_OR_VALIDATION,
    ImageUnavailable,
    fetch_image,
    infer_absent_object,
    read_captions_dataset,
    read_ccneg,
    read_coco,
    read_negationclip,
)
from omninegclip.common.cli import UserError

COCO_CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
    {"id": 17, "name": "cat", "supercategory": "animal"},
    {"id": 63, "name": "couch", "supercategory": "furniture"},
]


def write_png(path, color=(200, 10, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (8, 8), color if mode == "RGB" else 128).save(path)
    return path


def write_coco(tmp_path):
    """Two images: 1 (dog + couch, 2 captions), 2 (person + dog); an instances file with boxes."""
    images = [
        {"id": 1, "file_name": "000001.png", "width": 8, "height": 8},
        {"id": 2, "file_name": "000002.png", "width": 8, "height": 8},
    ]
    for image in images:
        write_png(tmp_path / "images" / image["file_name"])
    captions = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": [
            {"id": 12, "image_id": 1, "caption": "A puppy sleeping on a sofa."},
            {"id": 11, "image_id": 1, "caption": "A dog on a couch."},
            {"id": 13, "image_id": 2, "caption": "A man walking his dog."},
            {"id": 14, "image_id": 99, "caption": "An image that is not listed."},
        ],
    }
    instances = {
        "images": images,
        "categories": COCO_CATEGORIES,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 63, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 18, "bbox": [0, 0, 3, 3], "area": 9, "iscrowd": 0},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    return tmp_path / "captions.json", tmp_path / "instances.json", tmp_path / "images"


def test_coco_reads_objects_captions_and_counts_unknown_images(tmp_path):
    captions, instances, images = write_coco(tmp_path)
    source = read_coco(captions, instances, images, captions_per_image=0)
    assert [(item.image_id, item.caption) for item in source.items] == [
        ("1", "A dog on a couch."),
        ("1", "A puppy sleeping on a sofa."),
        ("2", "A man walking his dog."),
    ]  # captions in annotation-id order
    first = source.items[0]
    assert first.present_objects == ("couch", "dog") and first.salience == {"dog": 16.0, "couch": 64.0}
    assert (
        first.image.path == images / "000001.png" and first.image.read_bytes() == (images / "000001.png").read_bytes()
    )
    assert source.skips.counts == {"caption_of_unknown_image": 1}
    assert sorted(source.object_sets) == [("couch", "dog"), ("dog", "person")]
    assert source.exhaustive_objects
    assert [item.caption for item in read_coco(captions, instances, images, captions_per_image=1).items] == [
        "A dog on a couch.",
        "A man walking his dog.",
    ]


def test_coco_schema_errors_name_the_file_entry_and_key(tmp_path):
    captions, instances, images = write_coco(tmp_path)
    data = json.loads(captions.read_text())
    del data["annotations"][2]["caption"]
    captions.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"captions\.json: annotations\[2\] has no 'caption' key"):
        read_coco(captions, instances, images)
    data = json.loads(instances.read_text())
    del data["categories"]
    instances.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"instances\.json: the top level has no 'categories' key"):
        read_coco(captions, instances, images)
    with pytest.raises(UserError, match=r"missing\.json: no such file"):
        read_coco(tmp_path / "missing.json", instances, images)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match=r"broken\.json: not valid JSON \(line 1"):
        read_coco(tmp_path / "broken.json", instances, images)
    with pytest.raises(UserError, match="no such folder"):
        read_coco(captions, instances, tmp_path / "nope")


def test_captions_dataset_from_save_to_disk_groups_objects_by_image(tmp_path):
    png = tmp_path / "a.png"
    write_png(png)
    dataset = datasets.Dataset.from_dict(
        {
            "image": [str(png), str(png)],
            "caption": [["Two puppies on a sofa.", "Dogs resting"], ["A cat on a mat"]],
            "img_id": ["a", "b"],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "caption": datasets.List(datasets.Value("string")),
                "img_id": datasets.Value("string"),
            }
        ),
    )
    dataset.save_to_disk(str(tmp_path / "flickr"))
    source = read_captions_dataset(
        str(tmp_path / "flickr"), image_id_column="img_id", captions_per_image=0, progress=False
    )
    assert [(item.image_id, item.caption, item.present_objects) for item in source.items] == [
        ("a", "Two puppies on a sofa.", ("couch", "dog")),
        ("a", "Dogs resting", ("couch", "dog")),
        ("b", "A cat on a mat", ("cat",)),
    ]
    assert source.items[0].image.read_bytes() == png.read_bytes()  # bytes embedded by save_to_disk
    assert not source.exhaustive_objects and all(item.split is None for item in source.items)


def test_captions_dataset_from_imagefolder_and_csv(tmp_path):
    folder = tmp_path / "folder"
    write_png(folder / "x.png")
    write_png(folder / "y.png")
    (folder / "metadata.jsonl").write_text(
        '{"file_name": "x.png", "text": "a dog"}\n{"file_name": "y.png", "text": "a horse in a field"}\n'
    )
    source = read_captions_dataset(
        str(folder), caption_column="text", cache_dir=str(tmp_path / "cache"), progress=False
    )
    assert sorted((item.image_id, item.present_objects) for item in source.items) == [
        ("x.png", ("dog",)),
        ("y.png", ("horse",)),
    ]
    assert {item.image.read_bytes() for item in source.items} == {(folder / "x.png").read_bytes()}

    (tmp_path / "pairs.csv").write_text("filepath,caption\nfolder/x.png,a cat on a bed\nfolder/missing.png,a bus\n")
    source = read_captions_dataset(
        str(tmp_path / "pairs.csv"), image_column="filepath", cache_dir=str(tmp_path / "cache"), progress=False
    )
    assert [(item.image_id, item.present_objects) for item in source.items] == [
        ("x.png", ("bed", "cat")),
        ("missing.png", ("bus",)),
    ]
    assert source.items[0].image.read_bytes() == (folder / "x.png").read_bytes()  # relative to the CSV's folder
    assert source.items[1].image.read_bytes() is None
    with pytest.raises(UserError, match=r"has no column 'caption_text' \(--caption_column\)"):
        read_captions_dataset(
            str(tmp_path / "pairs.csv"),
            image_column="filepath",
            caption_column="caption_text",
            cache_dir=str(tmp_path / "cache"),
            progress=False,
        )


def test_captions_dataset_dict_splits_are_kept(tmp_path):
    png = write_png(tmp_path / "a.png")

    def part(caption):
        return datasets.Dataset.from_dict(
            {"image": [str(png)], "caption": [caption]},
            features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
        )

    datasets.DatasetDict(train=part("a dog"), test=part("a cat")).save_to_disk(str(tmp_path / "dd"))
    source = read_captions_dataset(str(tmp_path / "dd"), progress=False)
    assert [(item.caption, item.split) for item in source.items] == [("a dog", TRAIN_OR_VALIDATION), ("a cat", "test")]
    assert [
        item.split for item in read_captions_dataset(str(tmp_path / "dd"), split="test", progress=False).items
    ] == [None]


class NotPlainData:  # only arbitrary unpickling can rebuild an instance of a class
    pass


def ccneg_payload(count=5):
    paths = [f"/workspace/datasets/cc3m/cc3m_subset_images_extracted_final/{index:05d}.jpg" for index in range(count)]
    annotations = [
        {
            "json": {"caption": f"a man riding a horse number {index}", "key": f"{index:09d}"},
            "sop_data": {
                "negative-prompt": "a man not riding a horse, on the beach",
                "sop_chosen_object": "horse",
                "sop_decomposition": {"subject": "man", "object": "horse", "predicate": "riding"},
            },
        }
        for index in range(count)
    ]
    return {"image_paths": paths, "annotations": annotations, "num_ops": {1: list(range(count))}}


def test_ccneg_reads_published_structure_and_splits_last_items(tmp_path):
    payload = ccneg_payload()
    payload["annotations"][1]["sop_data"]["sop_chosen_object"] = None
    torch.save(payload, tmp_path / "ccneg_preprocessed.pt")
    folder = tmp_path / "ccneg_images" / "cc3m_subset_images_extracted_final"
    folder.mkdir(parents=True)
    for index in range(5):
        Image.new("RGB", (8, 8)).save(folder / f"{index:05d}.jpg")
    source = read_ccneg(tmp_path / "ccneg_preprocessed.pt", tmp_path / "ccneg_images", eval_size=2)
    assert [item.split for item in source.items] == [TRAIN_OR_VALIDATION] * 3 + ["test"] * 2
    first = source.items[0]
    assert first.presence.text == "a man not riding a horse on the beach"  # commas removed, as CoN-CLIP's loader does
    assert first.presence.obj == "horse" and first.present_objects == ("horse", "person")
    assert (
        first.image.path == folder / "00000.jpg" and first.image_id == "cc3m_subset_images_extracted_final/00000.jpg"
    )
    assert source.items[1].presence.obj == "horse"  # no chosen object recorded: the negated object the caption names
    with pytest.raises(UserError, match=r"--eval_size 6 must be between 0 and the 5 items"):
        read_ccneg(tmp_path / "ccneg_preprocessed.pt", tmp_path / "ccneg_images", eval_size=6)


def test_ccneg_refuses_unsafe_pickles_and_names_missing_keys(tmp_path):
    torch.save({"image_paths": [], "annotations": [NotPlainData()]}, tmp_path / "unsafe.pt")
    with pytest.raises(UserError, match=r"unsafe\.pt: refused to load: the file needs arbitrary unpickling"):
        read_ccneg(tmp_path / "unsafe.pt", tmp_path)
    payload = ccneg_payload(2)
    del payload["annotations"][1]["sop_data"]["negative-prompt"]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"bad\.pt: annotations\[1\]\['sop_data'\] has no 'negative-prompt' key"):
        read_ccneg(tmp_path / "bad.pt", tmp_path, eval_size=1)
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match=r"garbage\.pt: not a readable torch.save file"):
        read_ccneg(tmp_path / "garbage.pt", tmp_path)


@pytest.mark.parametrize(
    "caption, updated, expected",
    [
        ("a woman riding a horse in a field", "a woman not wearing a hat riding a horse in a field", "hat"),
        ("a child playing with a ball in the park", "a child playing with a ball in the park with no tree", "tree"),
        ("a kitchen with a stove", "a kitchen with a stove and no people around", "person"),
        ("a dog on a couch", "a dog on a couch", None),
    ],
)
def test_infer_absent_object(caption, updated, expected):
    assert infer_absent_object(caption, updated) == expected


def test_negationclip_reads_updated_captions(tmp_path):
    write_png(tmp_path / "train2014" / "COCO_train2014_000000000001.jpg")
    data = {
        "info": {},
        "licenses": [],
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "width": 8, "height": 8}],
        "annotations": [
            {
                "image_id": 1,
                "id": 5,
                "caption": "a dog on a couch",
                "updated_caption": "a dog on a couch with no cat nearby",
            },
            {"image_id": 1, "id": 6, "caption": "a sofa and a puppy", "updated_caption": "a sofa and a puppy"},
        ],
    }
    (tmp_path / "negationclip.json").write_text(json.dumps(data))
    source = read_negationclip(tmp_path / "negationclip.json", tmp_path / "train2014")
    first, second = source.items
    assert first.absence.text == "a dog on a couch with no cat nearby" and first.absence.obj == "cat"
    assert first.present_objects == ("couch", "dog") and first.presence is None
    assert second.absence is None and second.absence_skip == "negationclip_absent_object_not_found"
    del data["annotations"][0]["updated_caption"]
    (tmp_path / "negationclip.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"annotations\[0\] has no 'updated_caption' key"):
        read_negationclip(tmp_path / "negationclip.json", tmp_path / "train2014")


# ------------------------------------------------------------------------------ safe loading of pickles


class WritesAFile:
    """Unpickling this would run code that writes `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('unpickled')",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle protocol 5"])
def test_ccneg_never_unpickles_code(tmp_path, writer):
    marker = tmp_path / "marker"
    payload = {"image_paths": ["/workspace/datasets/cc3m/x.jpg"], "annotations": [WritesAFile(marker)]}
    path = tmp_path / "ccneg_preprocessed.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=5))
    with pytest.raises(
        UserError,
        match=rf"{re.escape(str(path))}: (refused to load: the file needs arbitrary unpickling of exec"
        r"|not a readable torch.save file)",
    ):
        read_ccneg(path, tmp_path)
    assert not marker.exists()
    pickle.loads(pickle.dumps(WritesAFile(marker)))  # what an unsafe loader would have done
    assert marker.read_text() == "unpickled"


# --------------------------------------------------------------------------------- images given as URLs


class _ImageServer(http.server.BaseHTTPRequestHandler):
    """Serves test images on 127.0.0.1: good, oversize (declared or streamed), slow, missing, redirecting."""

    requests: list[str] = []
    png = b""

    def do_GET(self):  # noqa: N802 (the http.server API)
        type(self).requests.append(self.path)
        try:
            if "slow" in self.path:
                self._headers(200, length=1000)
                for _ in range(40):  # 1 byte every 0.1 s: each read is quick, the whole is not
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.1)
            elif "big-declared" in self.path:
                self._headers(200, length=10_000_000)
                self.wfile.write(b"x" * 100)
            elif "big-streamed" in self.path:
                self._headers(200)  # no Content-Length: the size shows only while reading
                self.wfile.write(b"x" * 5000)
            elif "to-file" in self.path:
                self.send_response(302)
                self.send_header("Location", "file:///etc/hostname")
                self.end_headers()
            elif self.path.endswith(".png"):
                self._headers(200, length=len(self.png))
                self.wfile.write(self.png)
            else:
                self._headers(404, length=0)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def _headers(self, status: int, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "image/png")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def image_server(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 only; proxies are switched off so nothing leaves the machine."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    write_png(tmp_path / "served.png")
    _ImageServer.png = (tmp_path / "served.png").read_bytes()
    _ImageServer.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def files_under(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_fetch_image_downloads_once_into_the_cache(tmp_path, image_server):
    cache = tmp_path / "cache"
    path = fetch_image(f"{image_server}/images/a.png", cache, timeout=5, max_bytes=10_000)
    assert path.parent == cache.resolve() and path.suffix == ".png" and path.read_bytes() == _ImageServer.png
    assert fetch_image(f"{image_server}/images/a.png", cache, timeout=5, max_bytes=10_000) == path
    assert _ImageServer.requests == ["/images/a.png"]  # the second call used the cache
    assert files_under(cache) == [path.name]


@pytest.mark.parametrize(
    "name, reason",
    [
        ("big-declared.png", "image_download_too_large"),
        ("big-streamed.png", "image_download_too_large"),
        ("missing.jpg", "image_download_failed"),
        ("to-file.png", "image_download_failed"),
    ],
)
def test_fetch_image_refuses_oversize_missing_and_non_http_redirects(tmp_path, image_server, name, reason):
    with pytest.raises(ImageUnavailable) as error:
        fetch_image(f"{image_server}/{name}", tmp_path / "cache", timeout=5, max_bytes=1000)
    assert error.value.reason == reason and name in str(error.value)
    assert files_under(tmp_path / "cache") == []  # nothing partial left


def test_fetch_image_gives_up_on_a_slow_server_in_time(tmp_path, image_server):
    started = time.monotonic()
    with pytest.raises(ImageUnavailable) as error:
        fetch_image(f"{image_server}/slow.png", tmp_path / "cache", timeout=0.5, max_bytes=10_000)
    assert error.value.reason == "image_download_timeout"
    assert time.monotonic() - started < 2.0  # the trickle would take 4 s
    assert files_under(tmp_path / "cache") == []


@pytest.mark.parametrize(
    "path",
    ["/../../escape.png", "/%2e%2e/%2e%2e/escape.png", "/a/..%2F..%2Fescape.png", "/x.png?name=../../escape.png"],
)
def test_fetch_image_never_writes_outside_the_cache(tmp_path, image_server, path):
    cache = tmp_path / "deep" / "cache"
    before = files_under(tmp_path)
    written = fetch_image(image_server + path, cache, timeout=5, max_bytes=10_000)
    assert written.parent == cache.resolve() and written.read_bytes() == _ImageServer.png
    assert files_under(tmp_path) == sorted(before + [str(written.relative_to(tmp_path))])
    assert "escape" not in written.name and ".." not in written.name


@pytest.mark.parametrize("url", ["file:///etc/hostname", "ftp://127.0.0.1/x.png", "http://", "/just/a/path.png"])
def test_fetch_image_fetches_http_only(tmp_path, url):
    with pytest.raises(ImageUnavailable) as error:
        fetch_image(url, tmp_path / "cache")
    assert error.value.reason == "image_url_not_http"


def test_captions_build_with_image_urls_counts_failed_downloads(tmp_path, image_server):
    import data_builder

    rows = [
        {"url": f"{image_server}/img/{name}", "caption": caption}
        for name, caption in [
            ("dog.png", "a dog on a couch"),
            ("cat.png", "a cat on a bed"),
            ("gone.jpg", "a bus on a street"),
            ("big-streamed.png", "a car"),
        ]
    ]
    (tmp_path / "urls.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cache = tmp_path / "image_cache"
    summary = data_builder.main(
        [
            "captions",
            "--dataset",
            str(tmp_path / "urls.jsonl"),
            "--image_column",
            "url",
            "--out",
            str(tmp_path / "out"),
            "--image_cache",
            str(cache),
            "--max_image_bytes",
            "2000",
            "--validation_fraction",
            "0",
            "--test_fraction",
            "0",
            "--no_progress",
        ]
    )
    # Two source rows written, and their statement rows (--statement_rate's default) on top; a statement row
    # of a row whose image failed is not a second skip.
    statement_rows = summary["statements"]["written"]
    assert summary["rows_out"]["train"] == 2 + statement_rows
    assert summary["skips"]["row:image_download_failed"] == 1 and summary["skips"]["row:image_download_too_large"] == 1
    assert summary["skip_examples"]["row:image_download_failed"] == [f"{image_server}/img/gone.jpg"]
    assert len(files_under(cache)) == 2  # the two images that came, and nothing else
    rows_out = datasets.load_from_disk(str(tmp_path / "out"))["train"]
    assert sorted({row["image_id"] for row in rows_out}) == [
        f"{image_server}/img/cat.png",
        f"{image_server}/img/dog.png",
    ]


# ----------------------------------------------------------------------------- JSON / CSV read row by row


def test_json_shapes_and_csv_cells_are_read_as_written(tmp_path):
    write_png(tmp_path / "a.png")
    columns = {"image": ["a.png", "a.png"], "caption": ["a dog\u2028on a couch", ["a cat", "a kitten", ""]]}
    (tmp_path / "columns.json").write_text(json.dumps(columns, ensure_ascii=False))
    source = read_captions_dataset(str(tmp_path / "columns.json"), captions_per_image=0, progress=False)
    assert [item.caption for item in source.items] == ["a dog\u2028on a couch", "a cat", "a kitten"]
    assert source.skips.to_json() == {
        "skips": {"empty_caption": 1},
        "skip_examples": {"empty_caption": ["columns.json row 1 (column 'caption')"]},
    }
    (tmp_path / "pairs.csv").write_text(
        'image,caption\na.png,"NA"\na.png,123\na.png,"a dog, a cat"\na.png,"[\'a bus\', \'a car\']"\n'
    )
    source = read_captions_dataset(str(tmp_path / "pairs.csv"), captions_per_image=1, progress=False)
    assert [item.caption for item in source.items] == [
        "NA",
        "123",
        "a dog, a cat",
        "a bus",
    ]  # no type guessing; list cells as lists
    assert source.skips.counts == {"beyond_captions_per_image": 1}
    (tmp_path / "pairs.txt").write_text("image,caption\na.png,a dog\n")
    assert [
        item.caption for item in read_captions_dataset(str(tmp_path / "pairs.txt"), loader="csv", progress=False).items
    ] == ["a dog"]


def test_image_folder_with_split_sub_folders(tmp_path):
    for split, caption in (("train", "a dog"), ("test", "a cat")):
        write_png(tmp_path / "folder" / split / "x.png")
        (tmp_path / "folder" / split / "metadata.csv").write_text(f"file_name,caption\nx.png,{caption}\n")
    source = read_captions_dataset(str(tmp_path / "folder"), progress=False)
    assert [(item.caption, item.split) for item in source.items] == [("a cat", "test"), ("a dog", TRAIN_OR_VALIDATION)]
    assert all(
        item.image.read_bytes() == (tmp_path / "folder" / "train" / "x.png").read_bytes() for item in source.items
    )


def test_coco_ids_listed_twice_or_of_another_type_are_named_never_dropped(tmp_path):
    captions_file, instances_file, _ = write_coco(tmp_path)
    captions = json.loads(captions_file.read_text())
    captions["images"].append(dict(captions["images"][0]))  # the same entry twice: nothing lost, accepted
    captions_file.write_text(json.dumps(captions))
    assert len(read_coco(captions_file, instances_file, tmp_path / "images", captions_per_image=0).items) == 3
    captions["images"][-1]["file_name"] = "000002.png"  # id 1 with another file: one image would be dropped
    captions_file.write_text(json.dumps(captions))
    with pytest.raises(UserError, match=r"captions.json: images\[2\] repeats id 1 of images\[0\] with another file"):
        read_coco(captions_file, instances_file, tmp_path / "images")
    # Ids of the captions file as strings, the instances file's as integers: the types differ, said so.
    for image in captions["images"]:
        image["id"] = str(image["id"])
    for annotation in captions["annotations"]:
        annotation["image_id"] = str(annotation["image_id"])
    captions["images"].pop()
    captions_file.write_text(json.dumps(captions))
    with pytest.raises(
        UserError,
        match=r"captions.json: 'image_id' in annotations\[0\] is the string '1' "
        r"but instances.json has the id as the integer 1",
    ):
        read_coco(captions_file, instances_file, tmp_path / "images")
    instances = json.loads(instances_file.read_text())
    instances["annotations"][0]["image_id"] = "1"
    instances_file.write_text(json.dumps(instances))
    with pytest.raises(
        UserError,
        match=r"instances.json: 'image_id' in annotations\[0\] is the string '1' "
        r"but its 'images' list has the id as the integer 1",
    ):
        read_coco(captions_file, instances_file, tmp_path / "images")
    with pytest.raises(UserError, match=r"--captions_per_image -1 must be 0"):
        read_coco(captions_file, instances_file, tmp_path / "images", captions_per_image=-1)


def test_ccneg_images_unzipped_as_con_clip_says_are_found_from_the_ccneg_root(tmp_path):
    (tmp_path / "ccneg_dataset").mkdir()
    torch.save(ccneg_payload(2), tmp_path / "ccneg_dataset" / "ccneg_preprocessed.pt")
    folder = tmp_path / "ccneg_dataset" / "ccneg_images" / "cc3m_subset_images_extracted_final"
    for index in range(2):
        write_png(folder / f"{index:05d}.jpg")
    source = read_ccneg(tmp_path / "ccneg_dataset" / "ccneg_preprocessed.pt", tmp_path / "ccneg_dataset", eval_size=1)
    assert [item.image.path for item in source.items] == [folder / "00000.jpg", folder / "00001.jpg"]
    assert all(item.image.read_bytes() for item in source.items)


def test_coco_objects_named_in_worker_processes_equal_one_process(tmp_path, monkeypatch):
    import omninegclip.building.sources as sources

    captions, instances, images = write_coco(tmp_path)
    serial = read_coco(captions, instances, images, captions_per_image=0)
    from omninegclip.building import parallel

    monkeypatch.setattr(sources, "_NAMING_CHUNK", 1)  # 2 images: 2 tasks ...
    monkeypatch.setattr(
        sources, "fork_map", lambda function, count, num_proc, _: parallel.fork_map(function, count, num_proc, 1)
    )  # ... 2 workers
    pools = []
    real_context = parallel.multiprocessing.get_context
    monkeypatch.setattr(
        parallel.multiprocessing, "get_context", lambda method: pools.append(method) or real_context(method)
    )
    forked = read_coco(captions, instances, images, captions_per_image=0, num_proc=2)
    assert pools == ["fork"]
    assert [(item.caption, item.also_mentioned) for item in forked.items] == [
        (item.caption, item.also_mentioned) for item in serial.items
    ]
    assert serial.items[0].also_mentioned == ("couch", "dog")  # "sofa" and "puppy" are synonyms
