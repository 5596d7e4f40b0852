// A console app that references the packed core package `Valley` only (no Valley.Reporting, no Valley.Mpi), with
// TorchSharp-cpu chosen by the app, as a library user would: a custom TorchSharp module and a custom loss, then the top
// eigenvalue and the trace of its Hessian. The test that builds it compares the numbers with an exact Hessian.
using System.Globalization;
using TorchSharp;
using Valley;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using static TorchSharp.torch;

TorchRuntime.EnsureLoaded();
using var data = Synthetic.GaussianMixture(n: 96, dim: 5, classes: 3, seed: 1).To(CPU, ScalarType.Float64);
random.manual_seed(0);
var model = new Residual(5, 7, 3);
model.to(ScalarType.Float64);
LossFunction smoothed = (output, target) => nn.functional.cross_entropy(output, target, label_smoothing: 0.1);

using var objective = new Objective(model, smoothed, data);
var hessian = new HessianOperator(objective);
var top = Lanczos.Compute(hessian, new LanczosOptions { K = 1, Tolerance = 1e-8 });
var trace = Hutchinson.Estimate(hessian, new HutchinsonOptions { RelativeStandardError = 0.02, MaxProducts = 400, Seed = 3 });
Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"parameters {objective.Size}"));
Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"lambda_max {top.Values[0]:R}"));
Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"trace {trace.Trace:R} {trace.StandardError:R}"));
// The one-call entry: the same numbers through Hessian.Of.
using (var h = Hessian.Of(model, smoothed, data))
{
    var top3 = h.TopEigenvalues(3, new LanczosOptions { Tolerance = 1e-8 });
    var hpp = h.Trace(new HutchPlusPlusOptions { RelativeStandardError = 0.02, MaxProducts = 400, Seed = 4 });
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"top3 {top3.Values[0]:R} {top3.Values[1]:R} {top3.Values[2]:R}"));
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"hutchpp {hpp.Trace:R} {hpp.StandardError:R}"));
}

/// <summary>A custom module: a hidden tanh layer with a skip connection from the input to the output.</summary>
sealed class Residual : nn.Module<Tensor, Tensor>
{
    readonly TorchSharp.Modules.Linear hidden, head, skip;
    public Residual(int inputs, int width, int classes) : base("Residual")
    {
        hidden = nn.Linear(inputs, width);
        head = nn.Linear(width, classes);
        skip = nn.Linear(inputs, classes, hasBias: false);
        RegisterComponents();
    }
    public override Tensor forward(Tensor x) => head.call(tanh(hidden.call(x))) + skip.call(x);
}
