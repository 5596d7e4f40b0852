using TorchSharp;

namespace Valley.Sharpness;

/// <summary>Puts a module into train or eval mode and restores the mode it had on dispose.</summary>
internal sealed class ModeScope : IDisposable
{
    readonly torch.nn.Module _module;
    readonly bool _was;

    public ModeScope(torch.nn.Module module, bool train)
    {
        _module = module;
        _was = module.training;
        module.train(train);
    }

    public void Dispose() => _module.train(_was);
}
