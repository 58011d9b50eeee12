import time, torch, numpy as np, json
from ticketsolver import Ticket
def test_explore(mlp, cnn, mlp_ticket, cnn_ticket, tmp_path):
    for net, t in ((mlp, mlp_ticket), (cnn, cnn_ticket)):
        x = torch.randn(200, *net.input_shape)
        f = net.module(x); g = t.to_module()(x)
        print("rel", ((f-g).abs().max()/f.abs().max()).item(), [l.construction for l in t.layouts])
        print([ (p["weight_error_max"], p.get("bias_error_max"), p["redrawn_units"]) for p in t.build["pairs"]])
        p = t.save(tmp_path / "t.ticket"); sz = p.stat().st_size
        from safetensors.numpy import load_file
        blobs = sum(v.nbytes for v in load_file(str(p)).values())
        print("size", sz, "blobs", blobs, "source/8", t.sizes()["source_params"]/8, t.sizes())
        print("manifest bytes", len(json.dumps(t.manifest())))
