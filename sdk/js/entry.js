// The component's entry point (world `batch-stream-function`): the world's
// `handle` around the function's own `handle(message)` in app.js, and
// `handle-batch` calling it for each record of a batch in turn. Bundled in
// by the Runnel build.
import { handle as handler } from "app";
import { exportBatchHandler, exportHandler } from "runnel";

export const handle = exportHandler(handler);
export const handleBatch = exportBatchHandler(handle);
