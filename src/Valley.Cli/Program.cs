using Valley.Distributed;

namespace Valley.Cli;

public static class Program
{
    public static async Task<int> Main(string[] args)
    {
        // Before any tensor and any other thread: LibTorch reads it at its first allocation.
        TorchRuntime.EnableHugePageAllocations();
        // MPI is initialized only when mpiexec started this process with more than one rank (PMI_SIZE > 1).
        IProcessGroup group;
        try { group = MpiProcessGroup.FromEnvironment(); }
        catch (ValleyException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return ValleyCli.ExitBadInput;
        }
        try { return await ValleyCli.RunAsync(args, group: group); }
        finally { (group as IDisposable)?.Dispose(); }
    }
}
