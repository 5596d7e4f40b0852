using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;

namespace Valley.Distributed;

/// <summary>
/// MPI ranks through MPI.NET (docs/design.md §2). MPI.NET binds to MS-MPI's <c>msmpi.dll</c>; on Linux a DllImport resolver maps
/// it to MPICH's <c>libmpich.so.12</c>, which shares MS-MPI's integer-handle ABI (Open MPI does not). MPI is loaded only when
/// a process is started by <c>mpiexec</c>, so single-process use needs no MPI installed.
/// </summary>
public sealed class MpiProcessGroup : IProcessGroup, IDisposable
{
    static readonly object Gate = new();
    static bool _resolverSet;
    static MpiProcessGroup? _current;

    readonly MPI.Environment _env;
    readonly MPI.Intracommunicator _world;
    readonly Stopwatch _comm = new();

    MpiProcessGroup(MPI.Environment env)
    {
        _env = env;
        _world = MPI.Communicator.world;
    }

    /// <summary>This process's rank in MPI_COMM_WORLD.</summary>
    public int Rank => _world.Rank;
    /// <summary>The number of ranks mpiexec started.</summary>
    public int Size => _world.Size;
    /// <summary>Seconds spent inside collectives so far.</summary>
    public double CommunicationSeconds => _comm.Elapsed.TotalSeconds;

    /// <summary>Size of the job this process was started in by MPICH's <c>mpiexec</c> (PMI_SIZE), or 1 when it was started alone.</summary>
    public static int LaunchedSize => int.TryParse(Environment.GetEnvironmentVariable("PMI_SIZE"), out int n) && n > 0 ? n : 1;

    /// <summary>Ranks of this job on this machine (MPICH's MPI_LOCALNRANKS), to share the cores between them.</summary>
    public static int LocalRanks => int.TryParse(Environment.GetEnvironmentVariable("MPI_LOCALNRANKS"), out int n) && n > 0 ? n : 1;

    /// <summary>
    /// The world group when this process was started by <c>mpiexec</c> with more than one rank; otherwise the single process.
    /// Initializes MPI once per process; dispose the result (MPI_Finalize) before the process exits.
    /// </summary>
    public static IProcessGroup FromEnvironment()
    {
        if (Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is { } ompi && ompi != "1")
            throw new ValleyException("started by Open MPI's mpirun: Valley needs MPICH (Debian: apt install mpich; run with mpiexec.mpich -n N)");
        return LaunchedSize > 1 ? Initialize() : SingleProcess.Instance;
    }

    /// <summary>Initializes MPI (MPI_Init) and returns the world group.</summary>
    public static MpiProcessGroup Initialize()
    {
        lock (Gate)
        {
            if (_current is not null) return _current;
            if (!_resolverSet)
            {
                NativeLibrary.SetDllImportResolver(typeof(MPI.Environment).Assembly, Resolve);
                _resolverSet = true;
            }
            var args = Array.Empty<string>();
            try
            {
                return _current = new MpiProcessGroup(new MPI.Environment(ref args));
            }
            catch (Exception e) when (e is DllNotFoundException or TypeInitializationException or EntryPointNotFoundException)
            {
                throw new ValleyException($"MPI: cannot load MPICH's library ({NativeName}): install MPICH (Debian: apt install mpich) or run without mpiexec", e);
            }
        }
    }

    static string NativeName => OperatingSystem.IsWindows() ? "msmpi.dll" : OperatingSystem.IsMacOS() ? "libmpi.12.dylib" : "libmpich.so.12";

    static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (OperatingSystem.IsWindows() || !name.StartsWith("msmpi", StringComparison.OrdinalIgnoreCase)) return IntPtr.Zero;
        return NativeLibrary.Load(NativeName);
    }

    T Timed<T>(Func<T> f)
    {
        _comm.Start();
        try { return f(); }
        finally { _comm.Stop(); }
    }

    // Reduce to rank 0 and broadcast its result: every rank gets the same bits whatever reduction order MPI picks
    // (MPI_Allreduce does not promise identical results on all ranks, and Lanczos on ranks that disagree would branch apart).
    /// <summary>Sum over ranks, reduced on rank 0 and broadcast, so that every rank holds the same bits (MPI_Allreduce does not promise that).</summary>
    public void Sum(double[] values) => Timed(() =>
    {
        var reduced = _world.Reduce(values, MPI.Operation<double>.Add, 0);
        var result = Rank == 0 ? reduced : values;
        _world.Broadcast(ref result, 0);
        if (!ReferenceEquals(result, values)) Array.Copy(result, values, values.Length);
        return 0;
    });

    /// <summary>Every rank's values, concatenated in rank order, on every rank.</summary>
    public double[] AllGather(double[] values) => Timed(() =>
    {
        var counts = _world.Allgather(values.Length);
        return _world.AllgatherFlattened(values, counts);
    });

    /// <summary>The root's bytes on every rank.</summary>
    public byte[] Broadcast(byte[] value, int root = 0) => Timed(() =>
    {
        int length = value.Length;
        _world.Broadcast(ref length, root);
        var buffer = Rank == root ? value : new byte[length];
        _world.Broadcast(ref buffer, root);
        return buffer;
    });

    /// <summary>Every rank's bytes on the root, in rank order; null on the other ranks.</summary>
    public byte[][]? Gather(byte[] value, int root = 0) => Timed(() =>
    {
        var counts = _world.Allgather(value.Length);
        var flat = _world.GatherFlattened(value, counts, root);
        if (Rank != root) return null;
        var result = new byte[counts.Length][];
        int offset = 0;
        for (int r = 0; r < counts.Length; r++)
        {
            result[r] = flat.AsSpan(offset, counts[r]).ToArray();
            offset += counts[r];
        }
        return result;
    });

    /// <summary>Waits until every rank has reached this point.</summary>
    public void Barrier() => Timed(() => { _world.Barrier(); return 0; });

    /// <summary>Ends every rank of the job (MPI_Abort), after giving the failing rank's message time to reach mpiexec.</summary>
    public void Abort(int exitCode)
    {
        Console.Out.Flush();
        Console.Error.Flush();
        // mpiexec forwards a rank's output through its proxy, which MPI_Abort tears down at once: without a pause the
        // rank's last words (why it failed) were lost in about 1 run in 20. Half a second lets the proxy pass them on.
        Thread.Sleep(500);
        _world.Abort(exitCode);
    }

    /// <summary>Finalizes MPI (once, at the end of the process).</summary>
    public void Dispose()
    {
        lock (Gate)
        {
            if (_current is null) return;
            _current = null;
            Console.Out.Flush();
            Console.Error.Flush();
            QuietFinalize(_env);
        }
    }

    // MPICH 4.0's yaksa prints "leaked handle pool objects" for MPI.NET's datatypes at MPI_Finalize on every rank; the run
    // is over by then, so stderr is pointed at /dev/null for the finalize call only.
    static void QuietFinalize(MPI.Environment env)
    {
        if (OperatingSystem.IsWindows()) { env.Dispose(); return; }
        int saved = -1, devNull = -1;
        try
        {
            saved = Posix.dup(2);
            devNull = Posix.open("/dev/null", 1);
            if (saved >= 0 && devNull >= 0) Posix.dup2(devNull, 2);
            env.Dispose();
        }
        finally
        {
            if (saved >= 0) { Posix.dup2(saved, 2); Posix.close(saved); }
            if (devNull >= 0) Posix.close(devNull);
        }
    }

    static class Posix
    {
        [DllImport("libc", SetLastError = true)] public static extern int dup(int fd);
        [DllImport("libc", SetLastError = true)] public static extern int dup2(int fd, int fd2);
        [DllImport("libc", SetLastError = true)] public static extern int close(int fd);
        [DllImport("libc", SetLastError = true, CharSet = CharSet.Ansi)] public static extern int open(string path, int flags);
    }
}
