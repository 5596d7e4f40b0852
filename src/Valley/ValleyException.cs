namespace Valley;

/// <summary>
/// A user-facing error: bad input, a file that cannot be read, an option out of range.
/// The message is one line that names the file or option and what is wrong; the CLI prints it
/// and exits non-zero without a stack trace.
/// </summary>
public class ValleyException : Exception
{
    /// <summary>An error with its one-line message.</summary>
    public ValleyException(string message) : base(OneLine(message)) { }
    /// <summary>An error with its one-line message and the exception behind it.</summary>
    public ValleyException(string message, Exception inner) : base(OneLine(message), inner) { }

    /// <summary>
    /// Messages quote names read from files (tensor names, CSV cells), which may hold control characters: they are shown
    /// as U+FFFD so that an error stays one line and cannot move the terminal's cursor.
    /// </summary>
    static string OneLine(string message) =>
        string.Create(message.Length, message, (span, m) => { for (int i = 0; i < m.Length; i++) span[i] = char.IsControl(m[i]) ? '\uFFFD' : m[i]; });
}

/// <summary>A data file or folder that cannot be used (missing, corrupt, wrong shape, bad values).</summary>
public sealed class DataException : ValleyException
{
    /// <summary>The data file or folder.</summary>
    public string Path { get; }
    /// <summary>"path: problem".</summary>
    public DataException(string path, string problem) : base($"{path}: {problem}") => Path = path;
    /// <summary>"path: problem", with the exception behind it.</summary>
    public DataException(string path, string problem, Exception inner) : base($"{path}: {problem}", inner) => Path = path;
}

/// <summary>A weights file that cannot be loaded into the model.</summary>
public sealed class WeightsException : ValleyException
{
    /// <summary>The weights file.</summary>
    public string Path { get; }
    /// <summary>"path: problem".</summary>
    public WeightsException(string path, string problem) : base($"{path}: {problem}") => Path = path;
    /// <summary>"path: problem", with the exception behind it.</summary>
    public WeightsException(string path, string problem, Exception inner) : base($"{path}: {problem}", inner) => Path = path;
}

/// <summary>
/// A loss, gradient or operator-vector product with NaN or infinite values: the computation cannot go on meaningfully, so it
/// stops with a message that says where the values arose (rather than passing them on into an eigen-solver or a result file).
/// </summary>
public sealed class NonFiniteException(string message) : ValleyException(message);
