using static TorchSharp.torch;

namespace Valley.Distributed;

/// <summary>
/// The processes that share one computation, and the few collective operations Valley needs from them. Every rank must
/// call the same collectives in the same order (as in MPI). <see cref="SingleProcess"/> is the group of one, where every
/// collective is the identity; MpiProcessGroup (package Valley.Mpi) is a group of MPI ranks.
/// </summary>
public interface IProcessGroup
{
    /// <summary>This process's index, 0 ≤ Rank &lt; Size. Rank 0 writes files and prints.</summary>
    int Rank { get; }
    /// <summary>Number of processes in the group.</summary>
    int Size { get; }

    /// <summary>Element-wise sum over ranks, in place. The result is bit-identical on every rank, so that ranks never branch apart.</summary>
    void Sum(double[] values);

    /// <summary>Every rank's values, concatenated in rank order, on every rank.</summary>
    double[] AllGather(double[] values);

    /// <summary>The root's bytes, on every rank (other ranks' arguments are ignored).</summary>
    byte[] Broadcast(byte[] value, int root = 0);

    /// <summary>Every rank's bytes on the root, in rank order; null on the other ranks.</summary>
    byte[][]? Gather(byte[] value, int root = 0);

    /// <summary>Waits until every rank has reached this point.</summary>
    void Barrier();

    /// <summary>Ends every process of the group now: for a failure the other ranks cannot learn of at a collective.</summary>
    void Abort(int exitCode);

    /// <summary>Seconds spent inside collectives so far (the communication share of a run).</summary>
    double CommunicationSeconds { get; }
}

/// <summary>The group of one process: collectives are the identity.</summary>
public sealed class SingleProcess : IProcessGroup
{
    /// <summary>The one instance.</summary>
    public static readonly SingleProcess Instance = new();
    SingleProcess() { }
    /// <summary>Always 0.</summary>
    public int Rank => 0;
    /// <summary>Always 1.</summary>
    public int Size => 1;
    /// <summary>The identity: one process holds the sum.</summary>
    public void Sum(double[] values) { }
    /// <summary>A copy of the values.</summary>
    public double[] AllGather(double[] values) => (double[])values.Clone();
    /// <summary>The value itself.</summary>
    public byte[] Broadcast(byte[] value, int root = 0) => value;
    /// <summary>The value, as the only rank's.</summary>
    public byte[][]? Gather(byte[] value, int root = 0) => [value];
    /// <summary>Returns at once.</summary>
    public void Barrier() { }
    /// <summary>Ends the process with the exit code.</summary>
    public void Abort(int exitCode) => Environment.Exit(exitCode);
    /// <summary>Always 0.</summary>
    public double CommunicationSeconds => 0;
}

/// <summary>Helpers over <see cref="IProcessGroup"/>: tensors, shards and agreeing on failures.</summary>
public static class ProcessGroups
{
    /// <summary>Whether this process is rank 0, the one that writes files and prints.</summary>
    public static bool IsRoot(this IProcessGroup g) => g.Rank == 0;

    /// <summary>The contiguous share [start, start + count) of n items that this rank takes (the first n mod size ranks take one more).</summary>
    public static (long Start, long Count) Share(this IProcessGroup g, long n) => Share(n, g.Rank, g.Size);

    /// <summary>The contiguous share [start, start + count) of n items that <paramref name="rank"/> of <paramref name="size"/> takes.</summary>
    public static (long Start, long Count) Share(long n, int rank, int size)
    {
        long q = n / size, r = n % size;
        long start = rank * q + Math.Min(rank, r);
        return (start, q + (rank < r ? 1 : 0));
    }

    /// <summary>The sum over ranks of a tensor, as a new tensor of the same shape, dtype and device (reduced in float64 on the CPU).</summary>
    public static Tensor Sum(this IProcessGroup g, Tensor t)
    {
        if (g.Size == 1) return t.clone();
        using var scope = NewDisposeScope();
        var values = t.detach().to(ScalarType.Float64).cpu().contiguous().data<double>().ToArray();
        g.Sum(values);
        return Data.OwnedTensor.From(values).reshape(t.shape).to(t.dtype, t.device).MoveToOuterDisposeScope();
    }

    /// <summary>Sum over ranks of a few numbers.</summary>
    public static double[] Total(this IProcessGroup g, params double[] values)
    {
        var copy = (double[])values.Clone();
        g.Sum(copy);
        return copy;
    }

    /// <summary>
    /// Runs a step that can fail with bad input on some ranks only (a missing shard, a locked folder) and makes every rank
    /// agree on the outcome: when any rank failed, every rank throws the same <see cref="ValleyException"/>, naming the
    /// lowest failing rank, instead of the healthy ranks waiting forever at their next collective.
    /// </summary>
    public static T Agree<T>(this IProcessGroup g, Func<T> step, Action<T>? cleanupOnOtherFailure = null)
    {
        if (g.Size == 1) return step();
        T result = default!;
        ValleyException? failure = null;
        try { result = step(); }
        catch (ValleyException e) { failure = e; }
        var flags = new double[g.Size];
        if (failure is not null) flags[g.Rank] = 1;
        g.Sum(flags);
        int first = Array.IndexOf(flags, 1.0);
        if (first < 0) return result;
        if (failure is null && cleanupOnOtherFailure is not null) cleanupOnOtherFailure(result);
        var message = g.Broadcast(System.Text.Encoding.UTF8.GetBytes(failure?.Message ?? ""), first);
        var text = $"rank {first} of {g.Size}: {System.Text.Encoding.UTF8.GetString(message)}";
        throw failure is null ? new AgreedFailure(text) : new AgreedFailure(text, failure);
    }

    /// <summary>Runs a step that may fail on some ranks only and makes every rank agree on the outcome (see the generic overload).</summary>
    public static void Agree(this IProcessGroup g, Action step) => g.Agree<bool>(() => { step(); return true; });
}

/// <summary>A failure every rank of a group knows of (thrown on every rank by <see cref="ProcessGroups.Agree{T}"/>), so each can exit on its own.</summary>
public sealed class AgreedFailure : ValleyException
{
    /// <summary>A failure with its one-line message.</summary>
    public AgreedFailure(string message) : base(message) { }
    /// <summary>A failure with its one-line message and the exception behind it.</summary>
    public AgreedFailure(string message, Exception inner) : base(message, inner) { }
}
