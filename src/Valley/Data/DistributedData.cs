using System.Globalization;
using Valley.Distributed;

namespace Valley.Data;

/// <summary>What data a (possibly data-parallel) computation uses: the source, the training subset and the normalization.</summary>
public sealed record DataRequest
{
    /// <summary>
    /// A data folder or file (null: Fashion-MNIST). With several ranks, a path holding "{rank}" gives each rank its own shard
    /// (the rank's number replaces it).
    /// </summary>
    public string? Path { get; init; }
    /// <summary>Number of classes; 0: inferred from the labels (10 for IDX data).</summary>
    public int Classes { get; init; }
    /// <summary>A separate file of labels or targets for a tensor file of inputs (e.g. y.npy for x.npy); "{rank}" as in <see cref="Path"/>.</summary>
    public string? Labels { get; init; }
    /// <summary>Classification or regression; null: told by the data (see <see cref="DataSources.Open"/>).</summary>
    public TaskKind? Task { get; init; }
    /// <summary>Floating-point type of inputs read from tensor files; null: float32.</summary>
    public TorchSharp.torch.ScalarType? DType { get; init; }
    /// <summary>Standardize inputs with the training set's mean and standard deviation (over all shards).</summary>
    public bool Standardize { get; init; }
    /// <summary>A seeded subset of this many training examples; 0: all of them.</summary>
    public long Subset { get; init; }
    /// <summary>Seed of the subset.</summary>
    public long Seed { get; init; }
    /// <summary>
    /// Share the examples out between ranks (each holds its contiguous part; the data-parallel commands); false: every rank
    /// holds all of them (landscape grids, studies).
    /// </summary>
    public bool Shard { get; init; } = true;
}

/// <summary>
/// The data one rank holds: the split it opened, its training examples (the subset or its shard of it) and test examples,
/// and the name of the training examples before they were shared out. Disposing frees what this rank holds.
/// </summary>
public sealed class RankData : IDisposable
{
    internal RankData(DataSplit split, Dataset train, Dataset? test, bool perRank, string trainName)
    {
        Split = split; Train = train; Test = test; PerRank = perRank; TrainName = trainName;
    }

    /// <summary>The split as opened (and, for one data set, standardized).</summary>
    public DataSplit Split { get; }
    /// <summary>This rank's training examples.</summary>
    public Dataset Train { get; }
    /// <summary>This rank's test examples, if the data have a test set.</summary>
    public Dataset? Test { get; }
    /// <summary>Whether each rank opened its own shard ({rank} in the path).</summary>
    public bool PerRank { get; }
    /// <summary>The training examples' name before sharing out (rank 0's shard with {rank}).</summary>
    public string TrainName { get; }

    /// <summary>Frees what this rank holds.</summary>
    public void Dispose()
    {
        if (!ReferenceEquals(Train, Split.Train)) Train.Dispose();
        if (Test is not null && !ReferenceEquals(Test, Split.Test)) Test.Dispose();
        Split.Dispose();
    }
}

/// <summary>
/// Loading data for one process or for data-parallel ranks, in two steps so that ranks can agree on failures: the local step
/// (no collective operation: a rank that fails, e.g. on a missing shard, can tell the others at the next agreement) and the
/// collective step (test sets on all ranks or none; standardization with the statistics of all shards).
/// </summary>
public static class DistributedData
{
    /// <summary>
    /// The local step. With <see cref="DataRequest.Shard"/> and several ranks, each rank keeps its contiguous share of the
    /// training subset and of the test set (the examples one process would use, split), or, with {rank} in the path, opens its
    /// own shard and draws its share of the subset from it (seed + rank). Without sharding every rank holds all the data.
    /// </summary>
    public static RankData LoadLocal(DataRequest r, IProcessGroup group)
    {
        Check.AtLeast(r.Subset, 0, nameof(r.Subset));
        var path = r.Path;
        bool perRank = path?.Contains("{rank}", StringComparison.Ordinal) == true;
        if (perRank && !r.Shard)
            throw new ArgumentException($"{path}: {{rank}} shards are for data-parallel computations; this one needs all the data on every rank", nameof(r.Path));
        var labels = r.Labels;
        if (perRank)
        {
            path = path!.Replace("{rank}", group.Rank.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal);
            labels = labels?.Replace("{rank}", group.Rank.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal);
        }
        var split = DataSources.Open(path, r.Classes, labels, r.Task, r.DType);
        // One data set: standardized with its own statistics before sharding. Shards: with all shards' statistics, in Connect.
        if (r.Standardize && !perRank) split = DataSources.Standardize(split);
        Dataset? train = null, test = split.Test;
        string? name = null;
        try
        {
            if (perRank)
            {
                long mine = r.Subset > 0 ? group.Share(r.Subset).Count : split.Train.Count;
                if (mine == 0) throw Check.OutOfRange(nameof(r.Subset), r.Subset, $"must be at least the number of ranks ({group.Size})");
                train = mine < split.Train.Count ? split.Train.Subset(mine, r.Seed + group.Rank) : split.Train;
            }
            else
            {
                train = r.Subset > 0 && r.Subset < split.Train.Count ? split.Train.Subset(r.Subset, r.Seed) : split.Train;
                name = train.Name;
                if (r.Shard && group.Size > 1)
                {
                    var all = train;
                    train = all.Shard(group);
                    if (!ReferenceEquals(all, split.Train)) all.Dispose();
                    if (test is not null) test = test.Count >= group.Size ? test.Shard(group) : null;
                }
            }
            return new RankData(split, train, test, perRank, name ?? train.Name);
        }
        catch
        {
            new RankData(split, train ?? split.Train, test, perRank, "").Dispose();
            throw;
        }
    }

    /// <summary>
    /// The collective step: every rank must hold a test set or none (else they would call different collectives), and
    /// per-rank shards are standardized with the mean and deviation of all shards. Returns <paramref name="local"/> or, after
    /// standardization, new data (disposing the old).
    /// </summary>
    public static RankData Connect(RankData local, DataRequest r, IProcessGroup group)
    {
        if (group.Size > 1)
        {
            var withTest = group.Total(local.Test is null ? 0 : 1)[0];
            if (withTest != 0 && withTest != group.Size)
            {
                local.Dispose();
                throw new AgreedFailure($"{r.Path}: {withTest:0} of {group.Size} ranks have a test set; give every shard one or none");
            }
        }
        if (!(r.Standardize && local.PerRank)) return local;
        var (mean, std) = DataSources.Statistics(local.Split.Train, group);
        var train = local.Train.Normalize(mean, std);
        var test = local.Test?.Normalize(mean, std);
        var name = local.TrainName;
        local.Dispose();
        return new RankData(new DataSplit(train, test), train, test, perRank: true, name);
    }
}
