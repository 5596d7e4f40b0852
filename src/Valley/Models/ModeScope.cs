using static TorchSharp.torch;

namespace Valley.Models;

/// <summary>
/// Puts a module into train or eval mode for a scope and gives it back the mode it had: computations must not leave a
/// caller's model in another mode (BatchNorm and dropout behave differently in each).
/// </summary>
internal sealed class ModeScope : IDisposable
{
    readonly nn.Module _module;
    readonly bool _was;

    public ModeScope(nn.Module module, bool train)
    {
        _module = module;
        _was = module.training;
        module.train(train);
    }

    public void Dispose() => _module.train(_was);
}
