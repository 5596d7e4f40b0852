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

/// <summary>
/// Where a cached layer-stack product's time goes (mlp:784-128-64-10:tanh, 2,048 examples): the whole product through the
/// objective, the stack's R-passes alone on kept batches, the two matrix products with the inputs alone, and the
/// double-backward product through autograd.
/// </summary>
public static class StackProfile
{
    public static void Run(int reps)
    {
        using var data = Runner.FashionSubset(2048);
        var model = ModelSpec.Parse("mlp:784-128-64-10:tanh").Build(data, seed: 0);
        model.eval();
        var ps = model.parameters().Select(p => (Tensor)p).ToList();
        foreach (long batch in new long[] { 512, 2048 })
        {
            var options = new Valley.Curvature.ObjectiveOptions { BatchSize = batch };
            using var obj = new Valley.Curvature.Objective(model, Valley.Curvature.Losses.CrossEntropy, data, options);
            using var db = new Valley.Curvature.Objective(model, Valley.Curvature.Losses.CrossEntropy, data, options with { HessianProducts = Valley.Curvature.HessianProductMethod.DoubleBackward });
            var stack = obj.LayerStack!;
            var v = randn(obj.Size, generator: new Generator(1));
            using var keep = NewDisposeScope();
            var batches = new List<Valley.Curvature.LinearStack.Batch>();
            for (long s = 0; s < data.Count; s += batch)
                batches.Add(stack.Prepare(data.X.narrow(0, s, batch), data.Y.narrow(0, s, batch), (double)batch / data.Count, _ => { }));
            var Vt = v.unsqueeze(0);
            var result = zeros([1, obj.Size]);
            var W1 = randn(128, 784); var d = randn(batch, 128);
            var xs = batches.Select(b => b.Inputs[0]).ToList();
            var pr = randn(ps[0].numel(), dtype: ScalarType.Float64);
            var t = Runner.Interleaved(reps,
                () => { using var s = NewDisposeScope(); obj.HessianVectorProduct(v); },
                () => { using var s = NewDisposeScope(); foreach (var b in batches) stack.AddProduct(b, Vt, obj.Parameters, result); },
                () => { using var s = NewDisposeScope(); foreach (var x in xs) { x.matmul(W1.t()); d.t().matmul(x); } },
                () => { using var s = NewDisposeScope(); db.HessianVectorProduct(v); },
                () => { using var s = NewDisposeScope(); obj.Fingerprint(); },
                () => { using var s = NewDisposeScope(); obj.WeightsVersion(long.MaxValue); },
                () => { using var s = NewDisposeScope(); model.parameters().Select(p => (Tensor)p).Concat(model.buffers().Select(b => (Tensor)b)).ToList(); },
                () => { using var s = NewDisposeScope(); using var ng = no_grad(); ps[0].to(ScalarType.Float64); },
                () => { using var s = NewDisposeScope(); using var ng = no_grad(); ps[0].to(ScalarType.Float64).reshape(-1).dot(pr); },
                () => { using var s = NewDisposeScope(); using var ng = no_grad(); foreach (var q in ps.Skip(1)) q.to(ScalarType.Float64).reshape(-1).sum(); });
            Console.WriteLine($"batch {batch}: product through the objective {t[0] * 1000:F2} ms, R-passes on kept batches {t[1] * 1000:F2} ms, " +
                              $"the two input GEMMs per batch {t[2] * 1000:F2} ms, cached double backward {t[3] * 1000:F2} ms, the weights' fingerprint {t[4] * 1000:F2} ms, the weights compared with their copy {t[5] * 1000:F3} ms (listing the parameters and buffers {t[6] * 1000:F2} ms; W1 to float64 {t[7] * 1000:F3}, and dot {t[8] * 1000:F3}; the others {t[9] * 1000:F3})");
            var V10 = randn([obj.Size, 10], generator: new Generator(2));
            var tb = Runner.Interleaved(Math.Max(3, reps / 3),
                () => { using var s = NewDisposeScope(); obj.HessianBlockProduct(V10); },
                () => { using var s = NewDisposeScope(); db.HessianBlockProduct(V10); });
            Console.WriteLine($"batch {batch}: block of 10 through the objective {tb[0] * 1000:F2} ms, cached double backward {tb[1] * 1000:F2} ms");
        }
    }
}

/// <summary>A cached R-pass product taken apart (mlp:784-128-64-10, one chunk of 2,048 rows, random tensors of its shapes): the two products with the inputs against the rest, each timed alone.</summary>
public static class RpassOps
{
    public static void Run()
    {
        long N = 2048;
        var X = rand(N, 784); var V0 = randn(128, 784); var c0 = randn(128);
        var W1 = randn(64, 128); var V1 = randn(64, 128); var c1 = randn(64);
        var W2 = randn(10, 64); var V2 = randn(10, 64); var c2 = randn(10);
        var a1 = randn(N, 128); var a2 = randn(N, 64); var s0 = randn(N, 128); var s1 = randn(N, 64);
        var d0 = randn(N, 128); var d1 = randn(N, 64); var d2 = randn(N, 10); var k0 = randn(N, 128); var k1 = randn(N, 64);
        var p = softmax(randn(N, 10), 1);
        var h0 = zeros(128, 784); var h1 = zeros(64, 128); var h2 = zeros(10, 64); var b0 = zeros(128);
        var Rz0 = randn(N, 128); var Rz1 = randn(N, 64); var rd1 = randn(N, 64); var rd0 = randn(N, 128);
        var t = Runner.Interleaved(31,
            () => { using var s = NewDisposeScope(); c0.addmm(X, V0.t()); },                      // 0 forward big
            () => { using var s = NewDisposeScope(); h0.addmm_(rd0.t(), X); },                     // 1 backward big
            () => { using var s = NewDisposeScope(); var ra = Rz0 * s0; var rz = ra.matmul(W1.t()); rz.addmm_(a1, V1.t()); rz.add_(c1); }, // 2 layer 1 forward
            () => { using var s = NewDisposeScope(); var ra = Rz1 * s1; var rz = ra.matmul(W2.t()); rz.addmm_(a2, V2.t()); rz.add_(c2); }, // 3 layer 2 forward
            () => { using var s = NewDisposeScope(); var prf = p * d2; prf.sub_(p * prf.sum(-1, keepdim: true)).mul_(0.1); },      // 4 output curvature
            () => { using var s = NewDisposeScope(); h2.addmm_(d2.t(), a2); h2.addmm_(d2.t(), a2); var rg = d2.matmul(W2); rg.addmm_(d2, V2); rg.mul_(s1).addcmul_(Rz1, k1, 1); }, // 5 layer 2 backward
            () => { using var s = NewDisposeScope(); h1.addmm_(rd1.t(), a1); h1.addmm_(d1.t(), a1); var rg = rd1.matmul(W1); rg.addmm_(d1, V1); rg.mul_(s0).addcmul_(Rz0, k0, 1); }, // 6 layer 1 backward
            () => { using var s = NewDisposeScope(); b0.add_(rd0.sum(0L)); });                   // 7 a bias sum
        string[] names = ["X V0ᵀ", "Rδ0ᵀ X", "layer-1 forward", "layer-2 forward", "output curvature", "layer-2 backward", "layer-1 backward", "bias sum"];
        Console.WriteLine(string.Join(", ", names.Select((nm, i) => $"{nm} {t[i] * 1000:F2}")) + $"; total {t.Sum() * 1000:F2} ms");
    }
}
