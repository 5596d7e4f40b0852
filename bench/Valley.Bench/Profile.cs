using TorchSharp;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Bench;

public static class HvpProfile
{
    public static void Run()
    {
        using var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        model.eval();
        var ps = model.parameters().Select(p => (Tensor)p).ToList();
        var x = data.X; var y = data.Y;
        var vs = ps.Select(p => randn_like(p)).ToList();
        var t = Runner.Interleaved(15,
            () => { using var s = NewDisposeScope(); using var _ = no_grad(); model.call(x); },
            () => { using var s = NewDisposeScope(); var l = nn.functional.cross_entropy(model.call(x), y); autograd.grad([l], ps); },
            () => { using var s = NewDisposeScope(); var l = nn.functional.cross_entropy(model.call(x), y); autograd.grad([l], ps, retain_graph: true, create_graph: true); },
            () => { using var s = NewDisposeScope(); var l = nn.functional.cross_entropy(model.call(x), y); var g = autograd.grad([l], ps, retain_graph: true, create_graph: true);
                    Tensor d = (g[0] * vs[0]).sum(); for (int i = 1; i < g.Count; i++) d = d + (g[i] * vs[i]).sum(); autograd.grad([d], ps); },
            () => { using var s = NewDisposeScope(); var l = nn.functional.cross_entropy(model.call(x), y); var g = autograd.grad([l], ps, retain_graph: true, create_graph: true);
                    autograd.grad(g, ps, grad_outputs: vs); });
        Console.WriteLine($"forward {t[0]*1000:F2} ms, grad {t[1]*1000:F2}, grad(create_graph) {t[2]*1000:F2}, hvp {t[3]*1000:F2}, hvp(grad_outputs) {t[4]*1000:F2}");
    }
}

public static class MatmulProfile
{
    public static void Run()
    {
        var x = randn(2048, 784); var W = randn(128, 784); var d = randn(2048, 128);
        var t = Runner.Interleaved(20,
            () => { using var s = NewDisposeScope(); x.matmul(W.t()); },
            () => { using var s = NewDisposeScope(); d.t().matmul(x); },
            () => { using var s = NewDisposeScope(); nn.functional.linear(x, W); },
            () => { using var s = NewDisposeScope(); x.t().contiguous(); });
        Console.WriteLine($"x@Wt {t[0]*1000:F2} ms, dT@x {t[1]*1000:F2}, linear {t[2]*1000:F2}, transpose-copy x {t[3]*1000:F2}");
    }
}
