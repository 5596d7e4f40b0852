using Valley.Curvature;
using Valley.Data;

namespace Valley.Sharpness;

/// <summary>
/// The data of the batch-averaged measures (<see cref="WorstCaseSharpness"/>, <see cref="AverageCaseSharpness"/>): a seeded
/// subset of N training examples cut into batches of m, each batch an objective with the user's options (dtype, train mode,
/// parameter filter) on this process alone.
/// </summary>
internal static class SharpnessBatches
{
    /// <summary>
    /// The seeded subset of min(N, examples) points the measure averages over; with several ranks, this rank's share of it,
    /// drawn from its shard with a seed of its own.
    /// </summary>
    public static (long Examples, Dataset Subset) ShareOf(Objective objective, long examples, long seed)
    {
        var (g, data) = (objective.Group, objective.Data);
        if (g.Size == 1) return (Math.Min(examples, data.Count), data.Subset(Math.Min(examples, data.Count), seed));
        long n = Math.Min(examples, objective.Examples);
        long mine = Math.Min(Distributed.ProcessGroups.Share(n, g.Rank, g.Size).Count, data.Count);
        return (n, mine > 0 ? data.Subset(mine, seed + g.Rank) : data.Slice(0, 0));
    }

    /// <summary>
    /// One objective per batch of <paramref name="subset"/>, with <paramref name="objective"/>'s options (its parameter filter,
    /// dtype and train mode) but no group: each rank measures its own batches, the measures combine the values. Each objective
    /// is disposed when the enumeration moves on.
    /// </summary>
    public static IEnumerable<Objective> Objectives(Objective objective, Dataset subset, long batchSize)
    {
        foreach (var (x, y, size) in subset.Batches(batchSize))
        {
            using var batch = new Dataset(subset.Name, x, y, subset.Task, subset.NumClasses);
            using var batchObjective = new Objective(objective.Model, objective.Loss, batch, objective.Options with { BatchSize = size, Group = null });
            yield return batchObjective;
        }
    }
}
