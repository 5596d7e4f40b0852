// Valley as a library on your own TorchSharp module and loss (not a built-in):
// a small two-branch network on synthetic data, with a label-smoothed cross-entropy.
//   dotnet run --project examples/CustomModel
using TorchSharp;
using Valley;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Sharpness;
using static TorchSharp.torch;

TorchRuntime.EnsureLoaded();
using var data = Synthetic.GaussianMixture(n: 512, dim: 10, classes: 3, seed: 1);
random.manual_seed(0);
var model = new TwoBranch(10, 16, 3);

// Any loss works: (output, target) -> scalar mean over the batch.
LossFunction smoothed = (output, target) => nn.functional.cross_entropy(output, target, label_smoothing: 0.1);

// Train it a little with plain TorchSharp.
var opt = optim.Adam(model.parameters(), 0.01);
for (int step = 0; step < 200; step++)
{
    using var scope = NewDisposeScope();
    opt.zero_grad();
    smoothed(model.call(data.X), data.Y).backward();
    opt.step();
}

using var objective = new Objective(model, smoothed, data);          // L(w) over all 512 examples, eval mode
var hessian = new HessianOperator(objective);                            // an ICurvatureOperator
var top = Lanczos.Compute(hessian, new LanczosOptions { K = 1 });
var trace = HutchPlusPlus.Estimate(hessian, new HutchPlusPlusOptions { RelativeStandardError = 0.02 });
var sam = SamSharpness.Compute(objective, new SamSharpnessOptions { Rho = 0.05 });
Console.WriteLine($"parameters        {objective.Size}");
Console.WriteLine($"loss              {objective.Value():F4}");
Console.WriteLine($"lambda_max        {top.Values[0]:F4} (relative residual {top.RelativeResiduals[0]:0.0e+0}, {top.Products} Hessian-vector products)");
Console.WriteLine($"trace             {trace.Trace:F3} ± {trace.StandardError:F3} ({trace.Products} products)");
Console.WriteLine($"SAM sharpness     {sam.Value:G4} (rho 0.05)");

/// <summary>Two parallel hidden branches (tanh and ReLU) summed before the output layer.</summary>
sealed class TwoBranch : nn.Module<Tensor, Tensor>
{
    readonly TorchSharp.Modules.Linear a, b, head;
    public TwoBranch(int inputs, int hidden, int classes) : base("TwoBranch")
    {
        a = nn.Linear(inputs, hidden);
        b = nn.Linear(inputs, hidden);
        head = nn.Linear(hidden, classes);
        RegisterComponents();
    }
    public override Tensor forward(Tensor x) => head.call(tanh(a.call(x)) + nn.functional.relu(b.call(x)));
}
