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

    [DllImport("libc", EntryPoint = "getenv")]
    static extern IntPtr GetEnv(string name);

    /// <summary>
    /// Lets LibTorch's CPU allocator back buffers of 2 MiB and more with transparent huge pages, by setting PyTorch's
    /// <c>THP_MEM_ALLOC_ENABLE=1</c> in the process environment (Linux only; a value already set in the environment is
    /// kept, so 0 opts out). A Lanczos basis or a Krylov block is tens of MB of fresh memory whose first touch otherwise
    /// faults a 4 KiB page at a time (docs/design.md §2). Speed only: no number changes. LibTorch reads the variable once,
    /// at its first allocation, so call this at the start of the program, before any tensor and before other threads run
    /// (<c>setenv</c> is not thread-safe). It sets a variable of the whole process, which child processes inherit; the
    /// <c>valley</c> tool calls it, the library never does on its own. A value set with .NET's
    /// <see cref="Environment.SetEnvironmentVariable(string, string)"/> does not reach LibTorch: set it in the shell.
    /// </summary>
    /// <returns>Whether the variable is 1 in the process environment now.</returns>
    public static bool EnableHugePageAllocations()
    {
        if (!OperatingSystem.IsLinux()) return false;
        try
        {
            if (GetEnv("THP_MEM_ALLOC_ENABLE") == IntPtr.Zero) SetEnv("THP_MEM_ALLOC_ENABLE", "1", 0);
            return Marshal.PtrToStringAnsi(GetEnv("THP_MEM_ALLOC_ENABLE")) == "1";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return false; }
    }

    /// <summary>Ensure LibTorch is loaded; throws <see cref="ValleyException"/> with the cause and the fix.</summary>
    public static void EnsureLoaded()
    {
        if (_ready) return;
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
