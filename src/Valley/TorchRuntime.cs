using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace Valley;

/// <summary>
/// Loads LibTorch and, when it cannot be loaded, explains the real cause. TorchSharp reports a too-old
/// libstdc++ as "doesn't contain a reference to libtorch-cpu-linux-x64", which sends users the wrong way
/// (docs/design.md §2).
/// </summary>
public static class TorchRuntime
{
    static bool _ready;

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    /// <summary>Ensure LibTorch is loaded; throws <see cref="ValleyException"/> with the cause and the fix.</summary>
    public static void EnsureLoaded()
    {
        if (_ready) return;
        // LibTorch's CPU allocator backs buffers of 2 MiB and more with transparent huge pages when THP_MEM_ALLOC_ENABLE=1
        // (read once, at its first allocation). A Lanczos basis or a Krylov block is tens of MB of fresh memory whose first
        // touch otherwise costs a page fault per 4 KiB. A value the user set is kept.
        if (OperatingSystem.IsLinux() && Environment.GetEnvironmentVariable("THP_MEM_ALLOC_ENABLE") is null)
            try { SetEnv("THP_MEM_ALLOC_ENABLE", "1", 0); } catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { }
        try
        {
            InitializeDeviceType(TorchSharp.DeviceType.CPU);
            using var t = ones(1);
            _ready = true;
        }
        catch (Exception e) when (e is not ValleyException)
        {
            throw new ValleyException(Diagnose(e.Message), e);
        }
    }

    /// <summary>The path of the system libstdc++ and whether it provides GLIBCXX_3.4.32 (null where not Linux or not found).</summary>
    public static (string Path, bool Ok)? CheckLibStdCxx()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux)) return null;
        string[] candidates =
        [
            "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6",
        ];
        var path = candidates.FirstOrDefault(File.Exists);
        if (path is null) return null;
        var bytes = File.ReadAllBytes(path);
        return (path, bytes.AsSpan().IndexOf("GLIBCXX_3.4.32"u8) >= 0);
    }

    internal static string Diagnose(string torchMessage) => Diagnose(torchMessage, CheckLibStdCxx());

    internal static string Diagnose(string torchMessage, (string Path, bool Ok)? lib)
    {
        if (lib is { Ok: false } l)
            return $"LibTorch cannot load: {l.Path} is too old (it lacks GLIBCXX_3.4.32; TorchSharp 0.107 needs libstdc++ from GCC 13 or newer). " +
                   "Fix: run scripts/setup.sh (on Debian 12 it installs libstdc++6 from Debian 13 with an apt pin), or upgrade libstdc++6.";
        return $"LibTorch cannot load ({torchMessage.Split('\n')[0].Trim()}). Check that the TorchSharp-cpu native package restored (dotnet restore) and that the machine is x64 or arm64 macOS.";
    }
}
