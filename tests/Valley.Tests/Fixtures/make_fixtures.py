"""Makes the PyTorch fixtures used by Valley's weight-loading tests.

Run with Debian's python3-torch:  /usr/bin/python3 tests/Valley.Tests/Fixtures/make_fixtures.py
Writes, next to this script:
  mlp_4_5_3.pt        torch.save(state_dict) of nn.Sequential(Linear(4,5), ReLU(), Linear(5,3)), seed 0
  mlp_4_5_3.json      the same values and the model's output on a fixed input, for the C# test to compare
  evil.pt             a pickle whose unpickling would call os.system (must be refused, never run)
  mlp_4_5_3_views.pt  a state_dict for the same architecture (seed 1) whose tensors are views of ONE storage:
                      storage offsets, a transposed (non-contiguous) view and a strided view
  mlp_4_5_3_views.json  its values as PyTorch loads them and the model's output
  dtypes.pt / .json   one small tensor of every storage type torch.save writes, and their values
  bool_bias.pt        the mlp_4_5_3 state_dict with a bool '0.bias'
  int_key.pt          {1: tensor}: a dictionary whose key is not a name
  parameter.pt        {"w": nn.Parameter}: pickled Parameters (as in a pickled module)
  whole_model.pt      torch.save(model): a pickled module, not a state_dict
  legacy.pt           the mlp_4_5_3 state_dict in the pre-1.6 (non-zip) format (its storage keys are object ids, so
                      this one file differs from run to run)
  ok_handwritten.pt   hand-written like the files below, but valid (checks the hand-written layout against torch.load)
  view_out_of_bounds.pt  hand-written: '0.weight' is a 5x4 view at offset 2 of a storage of 20 floats
  expand_bomb.pt      hand-written: a 2^20 x 2^20 view with zero strides of a storage of one float
  storage_short.pt / storage_long.pt  hand-written: the storage entry holds fewer / more bytes than declared
  zip_bomb.pt         hand-written: the storage entry inflates to 64 MiB but its zip headers say 80 bytes
"""
import collections, io, json, os, pickle, struct, zipfile
import torch
from torch import nn

here = os.path.dirname(os.path.abspath(__file__))
def out(name): return os.path.join(here, name)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
torch.save(model.state_dict(), out("mlp_4_5_3.pt"))
x = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8
with torch.no_grad():
    y = model(x)
json.dump({
    "state": {k: v.flatten().tolist() for k, v in model.state_dict().items()},
    "input": x.flatten().tolist(),
    "output": y.flatten().tolist(),
}, open(out("mlp_4_5_3.json"), "w"), indent=1)

class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/valley-evil-pickle-ran",))

# A torch.save-style zip whose data.pkl is the malicious pickle. The timestamp is the one of the first version of this
# fixture, so that the file stays byte-identical when the script is run again.
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    for name, data in [("evil/data.pkl", pickle.dumps({"0.weight": Evil()}, protocol=2)), ("evil/version", "3\n")]:
        info = zipfile.ZipInfo(name, date_time=(2026, 11, 28, 21, 16, 12))
        info.external_attr = 0o600 << 16
        z.writestr(info, data)
open(out("evil.pt"), "wb").write(buf.getvalue())

# Views of one shared storage, as PyTorch writes them for slices of a flat parameter buffer: every tensor has a storage
# offset, '2.weight' is transposed and '2.bias' takes every other element.
torch.manual_seed(1)
flat = torch.randn(52)
views = collections.OrderedDict([
    ("0.weight", flat[2:22].view(5, 4)),
    ("0.bias", flat[22:27]),
    ("2.weight", flat[27:42].view(5, 3).t()),
    ("2.bias", flat[45:51:2]),
])
assert not views["2.weight"].is_contiguous() and not views["2.bias"].is_contiguous()
assert len({v.storage().data_ptr() for v in views.values()}) == 1
torch.save(views, out("mlp_4_5_3_views.pt"))
loaded = torch.load(out("mlp_4_5_3_views.pt"))
assert all(torch.equal(loaded[k], v) for k, v in views.items())
model.load_state_dict(loaded)
with torch.no_grad():
    y = model(x)
json.dump({
    "state": {k: v.flatten().tolist() for k, v in loaded.items()},
    "input": x.flatten().tolist(),
    "output": y.flatten().tolist(),
}, open(out("mlp_4_5_3_views.json"), "w"), indent=1)

# Every storage type; complex values are stored as [real, imaginary] pairs.
dtypes = collections.OrderedDict([
    ("f64", torch.tensor([1 / 3, -2.5, 1e300], dtype=torch.float64)),
    ("f32", torch.tensor([0.1, -7.0, 3e38], dtype=torch.float32)),
    ("f16", torch.tensor([0.5, -65504.0, 1e-4], dtype=torch.float16)),
    ("bf16", torch.tensor([1.5, -3e38, 0.0078125], dtype=torch.bfloat16)),
    ("i64", torch.tensor([-(2 ** 40), 1, 2 ** 62], dtype=torch.int64)),
    ("i32", torch.tensor([-(2 ** 31), 7, 2 ** 31 - 1], dtype=torch.int32)),
    ("i16", torch.tensor([-32768, 5, 32767], dtype=torch.int16)),
    ("i8", torch.tensor([-128, -1, 127], dtype=torch.int8)),
    ("u8", torch.tensor([0, 200, 255], dtype=torch.uint8)),
    ("bool", torch.tensor([True, False, True])),
    ("c64", torch.tensor([1 + 2j, -3j], dtype=torch.complex64)),
    ("c128", torch.tensor([0.25 - 1j], dtype=torch.complex128)),
    ("scalar", torch.tensor(4.25)),
    ("empty", torch.zeros(0, 3)),
])
torch.save(dtypes, out("dtypes.pt"))
def values(t):
    if t.is_complex(): return torch.view_as_real(t).flatten().tolist()
    return t.flatten().tolist() if t.dtype != torch.bool else t.flatten().int().tolist()
json.dump({k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "values": values(v)} for k, v in dtypes.items()},
          open(out("dtypes.json"), "w"), indent=1)

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
state = model.state_dict()
state["0.bias"] = torch.tensor([True, False, True, True, False])
torch.save(state, out("bool_bias.pt"))
torch.save({1: torch.zeros(3)}, out("int_key.pt"))
torch.save({"w": nn.Parameter(torch.zeros(2))}, out("parameter.pt"))
torch.save(model, out("whole_model.pt"))
torch.save(model.state_dict(), out("legacy.pt"), _use_new_zipfile_serialization=False)

# Hand-written archives, for layouts torch.save never writes: a pickler that emits the same persistent ids and
# _rebuild_tensor_v2 calls as torch.save does.
class Storage:
    def __init__(self, key, numel): self.key, self.numel = key, numel

class View:
    def __init__(self, storage, offset, size, stride): self.args = (storage, offset, size, stride)
    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args + (False, collections.OrderedDict()))

class ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None

def archive(name, obj, data, compress=zipfile.ZIP_STORED):
    pkl = io.BytesIO()
    ArchivePickler(pkl, protocol=2).dump(obj)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for entry, content in [("data.pkl", pkl.getvalue())] + [(f"data/{k}", v) for k, v in data.items()] + [("version", b"3\n")]:
            info = zipfile.ZipInfo(f"{name}/{entry}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress if entry.startswith("data/") else zipfile.ZIP_STORED
            z.writestr(info, content)
    return buf.getvalue()

twenty = torch.arange(20, dtype=torch.float32).numpy().tobytes()
s = Storage("0", 20)
ok = archive("ok", {"0.weight": View(s, 0, (5, 4), (4, 1))}, {"0": twenty})
open(out("ok_handwritten.pt"), "wb").write(ok)
assert torch.equal(torch.load(out("ok_handwritten.pt"))["0.weight"], torch.arange(20.0).view(5, 4))
open(out("view_out_of_bounds.pt"), "wb").write(archive("oob", {"0.weight": View(s, 2, (5, 4), (4, 1))}, {"0": twenty}))
try:
    torch.load(out("view_out_of_bounds.pt"))
    raise AssertionError("PyTorch loaded an out-of-bounds view")
except RuntimeError:
    pass
# One float repeated by zero strides into a 2^20 x 2^20 tensor: 4 TiB once copied (torch.load would return the view).
one = Storage("0", 1)
open(out("expand_bomb.pt"), "wb").write(archive("expand", {"0.weight": View(one, 0, (1 << 20, 1 << 20), (0, 0))}, {"0": twenty[:4]}))
open(out("storage_short.pt"), "wb").write(archive("short", {"0.weight": View(s, 0, (5, 4), (4, 1))}, {"0": twenty[:40]}))
open(out("storage_long.pt"), "wb").write(archive("long", {"0.weight": View(s, 0, (5, 4), (4, 1))}, {"0": twenty + twenty}))

# A deflated storage entry of 64 MiB of zeros whose local and central headers claim 80 bytes (the declared size).
bomb = bytearray(archive("bomb", {"0.weight": View(s, 0, (5, 4), (4, 1))}, {"0": bytes(64 << 20)}, compress=zipfile.ZIP_DEFLATED))
name = b"bomb/data/0"
patched = 0
for sig, size_at in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)]:
    at = 0
    while (at := bomb.find(sig, at)) >= 0:
        name_at = at + (30 if sig == b"PK\x03\x04" else 46)
        if bomb[name_at:name_at + len(name)] == name:
            struct.pack_into("<I", bomb, at + size_at, 80)
            patched += 1
        at += 4
assert patched == 2
open(out("zip_bomb.pt"), "wb").write(bytes(bomb))
print("fixtures written")
