using System.Globalization;
using Valley.Data;
using static TorchSharp.torch;

namespace Valley.Models;

/// <summary>
/// A built-in architecture from a spec string:
/// <list type="bullet">
/// <item><c>mlp:784-128-64-10</c> (ReLU), <c>mlp:784-128-64-10:tanh</c>, <c>...:nobias</c> (bias-free, for the Fisher-Rao norm)</item>
/// <item><c>lenet</c> (LeNet-5 style CNN, no BatchNorm), input channels, size and classes from the data</item>
/// <item><c>resnet</c>, <c>resnet:WIDTH</c>, <c>resnet:WIDTH:BLOCKS</c> (small ResNet with BatchNorm; default width 16, 1 block per stage)</item>
/// </list>
/// </summary>
public sealed record ModelSpec(string Kind, int[] Widths, string Activation, bool Bias, int Width, int Blocks)
{
    /// <summary>The spec as written (e.g. "mlp:784-128-64-10:tanh").</summary>
    public string Text { get; init; } = "";

    /// <summary>Held while anything in Valley seeds and draws from LibTorch's global generator.</summary>
    internal static readonly object GlobalGeneratorLock = new();

    /// <summary>Parses mlp:W0-W1-...-WL[:tanh|:relu][:nobias], lenet, or resnet[:WIDTH[:BLOCKS]]; a bad spec is one line naming it.</summary>
    public static ModelSpec Parse(string text)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new ValleyException("--model: empty model spec");
        var parts = text.Trim().Split(':');
        string kind = parts[0].ToLowerInvariant();
        switch (kind)
        {
            case "mlp":
            {
                if (parts.Length < 2) throw new ValleyException($"--model '{text}': an MLP needs its widths, e.g. mlp:784-128-64-10");
                var widths = parts[1].Split('-').Select(w =>
                    int.TryParse(w, NumberStyles.None, CultureInfo.InvariantCulture, out var v) && v > 0 ? v
                    : throw new ValleyException($"--model '{text}': width '{w}' is not a positive integer")).ToArray();
                if (widths.Length < 2) throw new ValleyException($"--model '{text}': an MLP needs at least two widths (input and output)");
                string act = "relu";
                bool bias = true;
                foreach (var opt in parts.Skip(2).Select(p => p.ToLowerInvariant()))
                {
                    if (opt == "nobias") bias = false;
                    else if (opt is "relu" or "tanh" or "gelu" or "sigmoid") act = opt;
                    else throw new ValleyException($"--model '{text}': unknown MLP option '{opt}' (relu, tanh, gelu, sigmoid, nobias)");
                }
                return new ModelSpec("mlp", widths, act, bias, 0, 0) { Text = text };
            }
            case "lenet":
                if (parts.Length > 1) throw new ValleyException($"--model '{text}': lenet takes no options");
                return new ModelSpec("lenet", [], "relu", true, 0, 0) { Text = text };
            case "resnet":
            {
                int width = 16, blocks = 1;
                if (parts.Length > 1 && (!int.TryParse(parts[1], out width) || width <= 0)) throw new ValleyException($"--model '{text}': width '{parts[1]}' is not a positive integer");
                if (parts.Length > 2 && (!int.TryParse(parts[2], out blocks) || blocks <= 0)) throw new ValleyException($"--model '{text}': blocks '{parts[2]}' is not a positive integer");
                if (parts.Length > 3) throw new ValleyException($"--model '{text}': expected resnet[:WIDTH[:BLOCKS]]");
                return new ModelSpec("resnet", [], "relu", true, width, blocks) { Text = text };
            }
            default:
                throw new ValleyException($"--model '{text}': unknown architecture '{kind}' (mlp:784-128-10, lenet, resnet[:WIDTH[:BLOCKS]])");
        }
    }

    /// <summary>
    /// Build the model for data with this example shape and number of classes (or targets), after checking
    /// that the data fits the architecture. The seed makes the initialization reproducible.
    /// </summary>
    public nn.Module<Tensor, Tensor> Build(long[] exampleShape, int outputs, long seed)
    {
        CheckInput(exampleShape, outputs);
        // Module initializers draw from LibTorch's global generator: seed and build under one lock, so that models built on
        // other threads at the same time cannot take numbers from this model's sequence.
        lock (GlobalGeneratorLock)
        {
            random.manual_seed(seed);
            return Kind switch
            {
                "mlp" => new Mlp(Widths, Activation, Bias),
                "lenet" => new LeNet((int)exampleShape[0], (int)exampleShape[1], outputs),
                _ => new SmallResNet((int)exampleShape[0], outputs, Width, Blocks),
            };
        }
    }

    /// <summary>The architecture for a data set's examples and classes, initialized with <paramref name="seed"/>.</summary>
    public nn.Module<Tensor, Tensor> Build(Dataset data, long seed) => Build(data.ExampleShape, data.NumClasses, seed);

    /// <summary>Throws a clear error when examples of this shape cannot go through the architecture.</summary>
    public void CheckInput(long[] exampleShape, int outputs)
    {
        long features = exampleShape.Aggregate(1L, (a, b) => a * b);
        string shape = string.Join("×", exampleShape);
        if (Kind == "mlp")
        {
            if (features != Widths[0])
                throw new ValleyException($"--model {Text}: the data has {features} features per example ([{shape}]) but the MLP's input width is {Widths[0]}");
            if (Widths[^1] != outputs)
                throw new ValleyException($"--model {Text}: the data has {outputs} classes/targets but the MLP has {Widths[^1]} outputs");
            return;
        }
        if (exampleShape.Length != 3 || exampleShape[1] != exampleShape[2] || (exampleShape[1] != 28 && exampleShape[1] != 32))
            throw new ValleyException($"--model {Text}: expects images of shape [C×28×28] or [C×32×32], the data has [{shape}]");
    }

    /// <summary>The equivalent PyTorch module, as documentation.</summary>
    public string PyTorchEquivalent() => Kind switch
    {
        "mlp" => "nn.Sequential(" + string.Join(", ", Enumerable.Range(0, Widths.Length - 1).SelectMany(i =>
            i + 2 < Widths.Length
                ? new[] { $"nn.Linear({Widths[i]}, {Widths[i + 1]}{(Bias ? "" : ", bias=False")})", $"nn.{ActivationClass()}()" }
                : new[] { $"nn.Linear({Widths[i]}, {Widths[i + 1]}{(Bias ? "" : ", bias=False")})" })) + ") on x.flatten(1)",
        "lenet" => "LeNet: conv1=Conv2d(C,6,5,padding=2), conv2=Conv2d(6,16,5), fc1, fc2, fc3 (see Valley.Models.LeNet)",
        _ => $"CIFAR-style ResNet (width {Width}, {Blocks} BasicBlock(s) per stage, BatchNorm), see Valley.Models.SmallResNet",
    };

    string ActivationClass() => Activation switch { "relu" => "ReLU", "tanh" => "Tanh", "gelu" => "GELU", _ => "Sigmoid" };

    /// <summary>The spec as written.</summary>
    public override string ToString() => Text;
}
