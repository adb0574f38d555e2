#!/usr/bin/env python3
"""Regenerates tests/fixtures/tfevents/: build/tests/test_tfevents --write-fixture writes the event
file with ounce's encoder, then TensorBoard's own reader (PyPI `tensorboard`: its TFRecord loader
and the Event protobuf) decodes it, and (step, wall_time, file_version, tag, value) of each record
go to expected.json, which tests/test_tfevents.c compares its own reader with.

usage: python3 tools/gen_tfevents_fixture.py   (after `make build/tests/test_tfevents`)
"""
import json
import os
import subprocess
import sys

from tensorboard.backend.event_processing import event_file_loader

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "tests", "fixtures", "tfevents")
EVENTS = os.path.join(OUT, "events.out.tfevents.fixture")


def main():
    os.makedirs(OUT, exist_ok=True)
    binary = os.path.join(ROOT, "build", "tests", "test_tfevents")
    subprocess.run([binary, "--write-fixture", EVENTS], check=True)
    events = []
    # RawEventFileLoader checks both CRCs of every record (the legacy reader skips bad ones).
    for raw in event_file_loader.RawEventFileLoader(EVENTS, detect_file_replacement=False).Load():
        from tensorboard.compat.proto import event_pb2

        ev = event_pb2.Event.FromString(raw)
        item = {"step": ev.step, "wall_time": ev.wall_time}
        if ev.HasField("file_version"):
            item["file_version"] = ev.file_version
        item["values"] = [{"tag": v.tag, "value": float(v.simple_value)} for v in ev.summary.value]
        events.append(item)
    # The same file through TensorBoard's EventFileLoader (what `tensorboard --logdir` uses).
    n = sum(1 for _ in event_file_loader.EventFileLoader(EVENTS).Load())
    if n != len(events):
        sys.exit("gen_tfevents_fixture: EventFileLoader read %d events, the raw loader %d" % (n, len(events)))
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump({"reader": "tensorboard %s" % __import__("tensorboard").__version__, "events": events}, f, indent=1)
        f.write("\n")
    print("gen_tfevents_fixture: %d events -> %s" % (len(events), OUT))


if __name__ == "__main__":
    main()
