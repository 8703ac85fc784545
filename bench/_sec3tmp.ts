import { compileShapesSection } from './devices.js';
for (const c of compileShapesSection(process.env.Q === '1')) console.log(String(c.rules).padStart(5), c.ms.toFixed(3).padStart(8), String(c.entries).padStart(7), c.shape);
