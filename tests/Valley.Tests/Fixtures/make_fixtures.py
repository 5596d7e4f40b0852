"""Makes the PyTorch fixtures used by Valley's weight-loading tests.

Run with Debian's python3-torch:  /usr/bin/python3 tests/Valley.Tests/Fixtures/make_fixtures.py
Writes, next to this script:
  mlp_4_5_3.pt        torch.save(state_dict) of nn.Sequential(Linear(4,5), ReLU(), Linear(5,3)), seed 0
  mlp_4_5_3.json      the same values and the model's output on a fixed input, for the C# test to compare
  evil.pt             a pickle whose unpickling would call os.system (must be refused, never run)
"""
import json, os, pickle, zipfile, io
import torch
from torch import nn

here = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
torch.save(model.state_dict(), os.path.join(here, "mlp_4_5_3.pt"))
x = torch.arange(8, dtype=torch.float32).reshape(2, 4) / 8
with torch.no_grad():
    out = model(x)
json.dump({
    "state": {k: v.flatten().tolist() for k, v in model.state_dict().items()},
    "input": x.flatten().tolist(),
    "output": out.flatten().tolist(),
}, open(os.path.join(here, "mlp_4_5_3.json"), "w"), indent=1)

class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/valley-evil-pickle-ran",))

# A torch.save-style zip whose data.pkl is the malicious pickle.
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w") as z:
    z.writestr("evil/data.pkl", pickle.dumps({"0.weight": Evil()}, protocol=2))
    z.writestr("evil/version", "3\n")
open(os.path.join(here, "evil.pt"), "wb").write(buf.getvalue())
print("fixtures written")
