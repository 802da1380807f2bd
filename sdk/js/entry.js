// The component's entry point: the world's `handle` around the function's
// own `handle(message)` in app.js. Bundled in by the Runnel build.
import { handle as handler } from "app";
import { exportHandler } from "runnel";

export const handle = exportHandler(handler);
