using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace Valley.Models;

/// <summary>
/// Multi-layer perceptron on flattened inputs. Parameter names equal PyTorch's
/// <c>nn.Sequential(nn.Linear(d0,d1), act, nn.Linear(d1,d2), act, ..., nn.Linear(dk-1,dk))</c>
/// applied to <c>x.flatten(1)</c>: <c>0.weight, 0.bias, 2.weight, 2.bias, ...</c>.
/// </summary>
public sealed class Mlp : Module<Tensor, Tensor>
{
    readonly Module<Tensor, Tensor>[] _layers;
    /// <summary>Layer widths, input first, output last (e.g. 784, 128, 64, 10).</summary>
    public IReadOnlyList<int> Widths { get; }
    /// <summary>The hidden layers' activation: relu or tanh.</summary>
    public string Activation { get; }
    /// <summary>Whether the linear layers have biases.</summary>
    public bool Bias { get; }

    /// <summary>The layers in order: Linear, activation, Linear, ..., Linear.</summary>
    internal IReadOnlyList<Module<Tensor, Tensor>> Layers => _layers;

    /// <summary>An MLP with PyTorch's nn.Sequential parameter names (0.weight, 0.bias, 2.weight, ...), initialized as PyTorch does.</summary>
    public Mlp(IReadOnlyList<int> widths, string activation = "relu", bool bias = true) : base("Mlp")
    {
        if (widths.Count < 2) throw new ValleyException("mlp: needs at least an input and an output width, e.g. mlp:784-10");
        Widths = widths.ToArray();
        Activation = activation;
        Bias = bias;
        var layers = new List<Module<Tensor, Tensor>>();
        for (int i = 0; i + 1 < widths.Count; i++)
        {
            layers.Add(Linear(widths[i], widths[i + 1], hasBias: bias));
            if (i + 2 < widths.Count) layers.Add(activation switch
            {
                "relu" => ReLU(),
                "tanh" => Tanh(),
                "gelu" => GELU(),
                "sigmoid" => Sigmoid(),
                _ => throw new ValleyException($"mlp: unknown activation '{activation}' (relu, tanh, gelu, sigmoid)"),
            });
        }
        _layers = layers.ToArray();
        for (int i = 0; i < _layers.Length; i++) register_module(i.ToString(), _layers[i]);
    }

    /// <summary>Logits of a batch.</summary>

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x.dim() > 2 ? x.flatten(1) : x;
        foreach (var l in _layers) h = l.call(h);
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The forward pass keeping, for every linear layer, its input a_k and its output z_k (in the caller's dispose scope):
    /// what per-example gradient norms need (‖∂ℓ_i/∂W_k‖² = ‖δ_ik‖² ‖a_ik‖², δ_ik = ∂ℓ_i/∂z_ik).
    /// </summary>
    public (Tensor Output, List<(Tensor Input, Tensor Output)> Linear) ForwardWithLinearActivations(Tensor x)
    {
        var h = x.dim() > 2 ? x.flatten(1) : x;
        var taps = new List<(Tensor, Tensor)>();
        foreach (var l in _layers)
        {
            var input = h;
            h = l.call(h);
            if (l is TorchSharp.Modules.Linear) taps.Add((input, h));
        }
        return (h, taps);
    }
}

/// <summary>
/// LeNet-5-style CNN without BatchNorm. PyTorch equivalent:
/// <code>
/// conv1 = nn.Conv2d(C, 6, 5, padding=2); conv2 = nn.Conv2d(6, 16, 5)
/// fc1 = nn.Linear(16*s*s, 120); fc2 = nn.Linear(120, 84); fc3 = nn.Linear(84, K)
/// forward: max_pool2d(relu(conv1(x)), 2) -> max_pool2d(relu(conv2(.)), 2) -> flatten -> relu(fc1) -> relu(fc2) -> fc3
/// </code>
/// with s = 5 for 28×28 inputs and s = 6 for 32×32.
/// </summary>
public sealed class LeNet : Module<Tensor, Tensor>
{
    readonly Conv2d conv1, conv2;
    readonly Linear fc1, fc2, fc3;

    /// <summary>LeNet-5 for images of <paramref name="channels"/> × <paramref name="size"/> × <paramref name="size"/>.</summary>
    public LeNet(int channels, int size, int classes) : base("LeNet")
    {
        if (size < 16) throw new ValleyException($"lenet: input size {size} is too small (need at least 16×16)");
        int s = ((size / 2) - 4) / 2;
        conv1 = Conv2d(channels, 6, 5, padding: 2);
        conv2 = Conv2d(6, 16, 5);
        fc1 = Linear(16 * s * s, 120);
        fc2 = Linear(120, 84);
        fc3 = Linear(84, classes);
        RegisterComponents();
    }

    /// <summary>Logits of a batch.</summary>

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = functional.max_pool2d(functional.relu(conv1.call(x)), 2);
        h = functional.max_pool2d(functional.relu(conv2.call(h)), 2).flatten(1);
        h = functional.relu(fc1.call(h));
        h = functional.relu(fc2.call(h));
        return fc3.call(h).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Basic residual block (He et al. 2016) with BatchNorm. PyTorch names: conv1, bn1, conv2, bn2 and,
/// when the shape changes, shortcut.0 (1×1 conv, no bias) and shortcut.1 (BatchNorm2d).
/// </summary>
public sealed class BasicBlock : Module<Tensor, Tensor>
{
    readonly Conv2d conv1, conv2;
    readonly BatchNorm2d bn1, bn2;
    readonly Sequential? shortcut;

    /// <summary>A residual block of two 3×3 convolutions with BatchNorm, and a 1×1 projection where the shape changes.</summary>
    public BasicBlock(int inPlanes, int planes, int stride) : base("BasicBlock")
    {
        conv1 = Conv2d(inPlanes, planes, 3, stride: stride, padding: 1, bias: false);
        bn1 = BatchNorm2d(planes);
        conv2 = Conv2d(planes, planes, 3, stride: 1, padding: 1, bias: false);
        bn2 = BatchNorm2d(planes);
        if (stride != 1 || inPlanes != planes)
            shortcut = Sequential(Conv2d(inPlanes, planes, 1, stride: stride, bias: false), BatchNorm2d(planes));
        RegisterComponents();
    }

    /// <summary>Logits of a batch.</summary>

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = functional.relu(bn1.call(conv1.call(x)));
        h = bn2.call(conv2.call(h));
        h = h + (shortcut is null ? x : shortcut.call(x));
        return functional.relu(h).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// A small CIFAR-style ResNet with BatchNorm for 28×28 or 32×32 inputs: conv1 (3×3, width w, no bias) + bn1,
/// three stages layer1..layer3 of <c>blocks</c> basic blocks with widths w, 2w, 4w (strides 1, 2, 2),
/// global average pooling, fc. With blocks = 1 this is ResNet-8; blocks = 3 gives ResNet-20 (PyHessian's model).
/// </summary>
public sealed class SmallResNet : Module<Tensor, Tensor>
{
    readonly Conv2d conv1;
    readonly BatchNorm2d bn1;
    readonly Sequential layer1, layer2, layer3;
    readonly Linear fc;

    /// <summary>A small ResNet: a stem, three stages of <paramref name="blocks"/> basic blocks (widths w, 2w, 4w), pooling and a linear head.</summary>
    public SmallResNet(int channels, int classes, int width = 16, int blocks = 1) : base("SmallResNet")
    {
        conv1 = Conv2d(channels, width, 3, padding: 1, bias: false);
        bn1 = BatchNorm2d(width);
        layer1 = Stage(width, width, blocks, 1);
        layer2 = Stage(width, 2 * width, blocks, 2);
        layer3 = Stage(2 * width, 4 * width, blocks, 2);
        fc = Linear(4 * width, classes);
        RegisterComponents();
    }

    static Sequential Stage(int inPlanes, int planes, int blocks, int stride)
    {
        var list = new List<Module<Tensor, Tensor>>();
        for (int i = 0; i < blocks; i++) list.Add(new BasicBlock(i == 0 ? inPlanes : planes, planes, i == 0 ? stride : 1));
        return Sequential(list);
    }

    /// <summary>Logits of a batch.</summary>

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = functional.relu(bn1.call(conv1.call(x)));
        h = layer3.call(layer2.call(layer1.call(h)));
        h = functional.adaptive_avg_pool2d(h, 1).flatten(1);
        return fc.call(h).MoveToOuterDisposeScope();
    }
}
